"""DSelect-k against the authors' code (google-research/google-research,
dselect_k_moe/dselect_k_moe.py): `EntropyRegularizer` and the unreachable-code
penalty both `reduce_sum` over the whole batch, and the default initialisers."""

import numpy as np

from keras_mtl.layers import DSelectK
from tests.layers import reference


def _official_entropy(selectors):
    # EntropyRegularizer.call: -reduce_sum(inputs * log(inputs + EPSILON)), no axis.
    return -np.sum(selectors * np.log(selectors + 1e-6))


def test_entropy_regulariser_is_summed_over_the_batch():
    gate = DSelectK(num_experts=4, k=2, entropy_reg=0.05, z_initializer="random_normal")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    gate(x, training=True)
    _, selectors = reference.dselect_k(gate, x)
    np.testing.assert_allclose(
        float(gate.losses[0]), 0.05 * _official_entropy(selectors), rtol=1e-4
    )
    # The same examples twice give twice the regulariser (a mean would not change).
    gate(np.concatenate([x, x]), training=True)
    np.testing.assert_allclose(
        float(gate.losses[0]), 2 * 0.05 * _official_entropy(selectors), rtol=1e-4
    )


def test_unreachable_code_penalty_is_summed_over_the_batch():
    gate = DSelectK(num_experts=5, k=3, entropy_reg=0.0, z_initializer="random_normal")
    x = np.random.default_rng(1).normal(size=(6, 4)).astype("float32")
    gate(x, training=True)
    _, selectors = reference.dselect_k(gate, x)
    # reduce_sum(1 / reduce_sum(selector_outputs, axis=-1)): over examples and selectors.
    expected = np.sum(1.0 / selectors.sum(-1))
    assert len(gate.losses) == 1
    np.testing.assert_allclose(float(gate.losses[0]), expected, rtol=1e-4)
    assert float(gate.losses[0]) >= 6 * 3 - 1e-4  # 1 per selector and example at least


def test_default_gamma_and_initialisers_are_the_authors():
    assert DSelectK(num_experts=8, k=2).gamma == 1.0
    gamma = 2.0
    gate = DSelectK(num_experts=8, k=4, gamma=gamma)
    gate.build((None, 64))
    z = [np.asarray(gate.z_dense.kernel), np.asarray(gate.z_dense.bias)]
    w = [np.asarray(gate.w_dense.kernel), np.asarray(gate.w_dense.bias)]
    # z: RandomUniform(-gamma / 100, gamma / 100); w: RandomUniform() = U(-0.05, 0.05).
    for values, bound in [(z[0], gamma / 100), (w[0], 0.05)]:
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.9 * bound
    assert np.abs(z[1]).max() <= gamma / 100 and np.abs(w[1]).max() <= 0.05
    assert np.ptp(z[1]) > 0 and np.ptp(w[1]) > 0
