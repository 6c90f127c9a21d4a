import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl.layers import DSelectK
from keras_mtl.layers.dselect_k import smooth_step
from tests.layers import reference


def test_smooth_step_matches_the_paper_and_is_continuous():
    gamma = 0.8
    x = np.linspace(-1.0, 1.0, 201).astype("float32")
    np.testing.assert_allclose(
        np.asarray(smooth_step(x, gamma)), reference.smooth_step(x, gamma), atol=1e-6
    )
    edges = np.asarray(smooth_step(np.array([-0.4, 0.4, 0.0], "float32"), gamma))
    np.testing.assert_allclose(edges, [0.0, 1.0, 0.5], atol=1e-6)


@pytest.mark.parametrize("num_experts, k", [(4, 2), (5, 3), (8, 1)])
def test_weights_match_brute_force(num_experts, k):
    gate = DSelectK(
        num_experts, k, gamma=2.0, z_initializer="random_normal", w_initializer="random_normal"
    )
    x = np.random.default_rng(0).normal(size=(7, 3)).astype("float32")
    weights = np.asarray(gate(x))
    expected, selectors = reference.dselect_k(gate, x)
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-6)
    if num_experts & (num_experts - 1) == 0:
        # Every code is an expert: each selector is a distribution.
        np.testing.assert_allclose(selectors.sum(-1), 1.0, atol=1e-6)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


def test_exactly_k_nonzero_once_saturated():
    # Selector logits fixed by the bias at +-gamma: the smooth-step is 0 or 1,
    # and the three selectors point at experts 1, 4 and 6 (codes 001, 100, 110).
    gate = DSelectK(num_experts=8, k=3, gamma=1.0)
    x = np.random.default_rng(1).normal(size=(10, 4)).astype("float32")
    gate.build(x.shape)
    codes = np.array([[0, 0, 1], [1, 0, 0], [1, 1, 0]], "float32")
    gate.z_dense.kernel.assign(np.zeros((4, 9), "float32"))
    gate.z_dense.bias.assign(((2 * codes - 1) * 1.0).ravel())
    weights = np.asarray(gate(x))
    assert ((weights > 0).sum(-1) == 3).all()
    assert set(np.flatnonzero(weights[0])) == {1, 4, 6}
    alpha = reference.softmax(
        x @ np.asarray(gate.w_dense.kernel, "float64") + np.asarray(gate.w_dense.bias)
    )
    np.testing.assert_allclose(weights[:, [1, 4, 6]], alpha, rtol=1e-5)


def test_saturated_random_gate_has_at_most_k_nonzero():
    gate = DSelectK(num_experts=16, k=3, gamma=1e-3, z_initializer="random_normal")
    x = np.random.default_rng(2).normal(size=(50, 6)).astype("float32")
    gate.build(x.shape)
    _, selectors = reference.dselect_k(gate, x)
    # Keep the examples whose selector logits all lie outside [-gamma/2, gamma/2].
    saturated = (selectors.max(-1) == 1.0).all(-1)
    assert saturated.sum() >= 40
    x, selectors = x[saturated], selectors[saturated]
    weights = np.asarray(gate(x))
    distinct = np.array([len({int(s.argmax()) for s in row}) for row in selectors])
    np.testing.assert_array_equal((weights > 0).sum(-1), distinct)
    assert distinct.max() == 3


def test_entropy_regulariser_is_a_training_loss():
    gate = DSelectK(num_experts=4, k=2, entropy_reg=0.1, z_initializer="random_normal")
    x = np.random.default_rng(3).normal(size=(6, 3)).astype("float32")
    gate(x)
    assert gate.losses == []
    gate(x, training=True)
    _, selectors = reference.dselect_k(gate, x)
    # Summed over the batch, as the authors' EntropyRegularizer does.
    entropy = -(selectors * np.log(selectors + 1e-6)).sum()
    assert len(gate.losses) == 1
    np.testing.assert_allclose(float(gate.losses[0]), 0.1 * entropy, rtol=1e-4)


def test_unreachable_codes_penalty_when_not_a_power_of_two():
    gate = DSelectK(num_experts=3, k=2, entropy_reg=0.0, z_initializer="random_normal")
    x = np.random.default_rng(4).normal(size=(6, 3)).astype("float32")
    gate(x, training=True)
    _, selectors = reference.dselect_k(gate, x)
    expected = (1.0 / selectors.sum(-1)).sum()
    assert len(gate.losses) == 1
    np.testing.assert_allclose(float(gate.losses[0]), expected, rtol=1e-4)


@pytest.mark.parametrize("num_experts", [3, 4])
def test_regularisers_leave_padded_positions_out(num_experts):
    tokens = np.array([[3, 1, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]], "int32")
    embedding = keras.layers.Embedding(9, 4, mask_zero=True)
    gate = DSelectK(num_experts, k=2, entropy_reg=1.0, z_initializer="random_normal")
    x, mask = embedding(tokens), tokens != 0
    gate(x, training=True)
    selectors = np.asarray(gate.selector_outputs(x), "float64")  # (2, 6, k, E)
    entropy = -(selectors * np.log(selectors + 1e-6)).sum((-2, -1))
    expected = [entropy[mask].sum()]
    if num_experts == 3:
        expected.append((1.0 / selectors.sum(-1)).sum(-1)[mask].sum())
    np.testing.assert_allclose([float(v) for v in gate.losses], expected, rtol=1e-5)


def test_regulariser_reaches_the_model_losses():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, DSelectK(4, 2, entropy_reg=1.0)(inputs))
    model(np.ones((2, 3), "float32"), training=True)
    assert len(model.losses) == 1 and float(model.losses[0]) > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_experts": 4, "k": 5}, "k=5"),
        ({"num_experts": 4, "k": 0}, "k=0"),
        ({"num_experts": 0, "k": 1}, "num_experts=0"),
        ({"num_experts": 4, "k": 2, "gamma": -1.0}, "gamma=-1.0"),
        ({"num_experts": 4, "k": 2, "entropy_reg": -1.0}, "entropy_reg=-1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DSelectK(**kwargs)


def test_one_expert_gets_all_the_weight():
    # With E = 1 the binary code has m = ceil(log2 1) = 0 bits: every selector
    # is the empty product 1, the weight is 1 for every example, and E = 2^0
    # leaves no unreachable code to penalise (authors' dselect_k_moe.py).
    gate = DSelectK(num_experts=1, k=1, entropy_reg=0.0, z_initializer="random_normal")
    x = np.random.default_rng(6).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(gate(x)), np.ones((5, 1)), atol=1e-7)
    gate(x, training=True)
    assert gate.losses == []
    weights, selectors = reference.dselect_k(gate, x)
    np.testing.assert_allclose(weights, 1.0)
    np.testing.assert_allclose(selectors, 1.0)


def _model_with_a_selector_on_an_unused_code():
    import keras_mtl

    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    layer = keras_mtl.layers.MMoE(
        2, 3, expert_units=(4,), gate="dselect_k", gate_kwargs={"k": 1, "entropy_reg": 0.0}
    )
    h = layer(inputs)
    heads = {t: keras.layers.Dense(1, name=t)(h[i]) for i, t in enumerate("ab")}
    model = keras_mtl.MultiTaskModel(inputs, heads)
    # Code 11 (3) is no expert of 3: task a's selector gives every expert 0
    # and its penalty 1 / sum is infinite, with zero gradient (saturated).
    gate = layer.gates[0]
    gate.z_dense.kernel.assign(np.zeros((3, 2), "float32"))
    gate.z_dense.bias.assign(np.array([1.0, 1.0], "float32"))
    return model


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_an_infinite_penalty_is_not_trained_on_silently(nonfinite):
    # The step's task losses and gradients are finite; only the penalty is
    # not. The model logged loss inf and applied the steps before.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = {t: rng.normal(size=(32, 1)).astype("float32") for t in "ab"}
    model = _model_with_a_selector_on_an_unused_code()
    model.compile(optimizer="adam", loss="mse", nonfinite=nonfinite)
    if nonfinite == "raise":
        with pytest.raises(tf.errors.InvalidArgumentError, match="Non-finite regularization loss"):
            model.fit(x, y, batch_size=16, verbose=0)
        return
    history = model.fit(x, y, batch_size=16, verbose=0)
    assert history.history["skipped_steps"] == [2.0]
    assert int(model.optimizer.iterations) == 0
