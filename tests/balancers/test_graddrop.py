import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import GradDrop
from tests.balancers import gradient_checks as checks


def graddrop_numpy(grads, signs, draw, leak):
    """GradDrop (Chen et al. 2020) on (T, B, D) gradients with sign correction."""
    summed = (grads * signs[None]).sum(axis=1)
    purity = 0.5 * (
        1 + summed.sum(0) / np.where(np.abs(summed).sum(0) > 0, np.abs(summed).sum(0), 1)
    )
    keep = ((purity > draw) & (summed > 0)) | ((purity < draw) & (summed < 0))
    mask = leak[:, None] + (1 - leak[:, None]) * keep
    return (grads * mask[:, None, :]).sum(axis=0).reshape(-1)


def test_representation_mode_matches_numpy():
    rng = np.random.default_rng(0)
    num_tasks, batch, features = 3, 4, 5
    rep = rng.normal(size=(batch, features)).astype(np.float32)
    rep[0, 0] = 0.0  # a dead activation has sign 0
    grads = rng.normal(size=(num_tasks, batch, features))
    jac = grads.reshape(num_tasks, -1)
    leak = np.array([0.0, 0.5, 0.0])
    d, w = checks.run(GradDrop(leak=leak, seed=3), jac, representation=rep)
    draw = checks.seeded_uniform(3, (features,))
    expected = graddrop_numpy(grads, np.sign(rep), draw, leak)
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(w, np.ones(3))


def test_parameter_jacobian_treats_columns_as_activations():
    rng = np.random.default_rng(1)
    jac = rng.normal(size=(2, 9))
    draw = checks.seeded_uniform(4, (9,))
    for leak in ([0.0, 0.0], [0.3, 0.9]):
        d, _ = checks.run(GradDrop(leak=leak, seed=4), jac)
        expected = graddrop_numpy(jac[:, None, :], np.ones((1, 9)), draw, np.array(leak))
        np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)


def test_agreeing_signs_are_kept_and_leak_one_is_identity():
    jac = np.array([[1.0, -2.0, 3.0], [0.5, -1.0, 0.1]])
    d, _ = checks.run(GradDrop(seed=0), jac)
    np.testing.assert_allclose(d, jac.sum(axis=0), rtol=1e-6)
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(3, 8))
    d, _ = checks.run(GradDrop(leak=1.0, seed=0), jac)
    np.testing.assert_allclose(d, jac.sum(axis=0), rtol=1e-6)


def test_each_activation_keeps_one_sign():
    rng = np.random.default_rng(5)
    jac = rng.normal(size=(4, 200))
    d, _ = checks.run(GradDrop(seed=1), jac)
    for column, value in zip(jac.T, d, strict=True):
        kept_pos = np.isclose(value, column[column > 0].sum())
        kept_neg = np.isclose(value, column[column < 0].sum())
        assert kept_pos or kept_neg


def test_graph_jit_and_finite():
    checks.check_finite(lambda: GradDrop(seed=0))
    checks.check_graph_and_jit(lambda: GradDrop(seed=2), num_tasks=(2, 3), jit=False)
    # XLA draws other random numbers; the result is still one sign per column.
    jac = np.random.default_rng(6).normal(size=(3, 50))
    d, _ = checks.run(GradDrop(seed=2), jac, graph=True, jit=True)
    for column, value in zip(jac.T, d, strict=True):
        assert np.isclose(value, column[column > 0].sum()) or np.isclose(
            value, column[column < 0].sum()
        )


def test_config_and_validation():
    checks.check_config_round_trip(GradDrop(leak=[0.1, 0.2], seed=1), GradDrop)
    assert GradDrop.preferred_gradient_mode == "representation"
    assert isinstance(balancers.get("graddrop"), GradDrop)
    # A NumPy array of leaks is stored as a list of floats, so the config stays JSON.
    assert GradDrop(leak=np.array([0.1, 0.2])).get_config()["leak"] == [0.1, 0.2]
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=1.5)
    with pytest.raises(ValueError, match=r"Received: leak=array\(\[0.1, 1.2\]\)"):
        GradDrop(leak=np.array([0.1, 1.2]))
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=[0.1, 0.2]).build(3)


def test_representation_with_spatial_dimensions():
    rng = np.random.default_rng(7)
    rep = rng.normal(size=(2, 3, 4)).astype(np.float32)
    grads = rng.normal(size=(2, 2, 12))
    d, _ = checks.run(GradDrop(seed=6), grads.reshape(2, -1), representation=rep)
    draw = checks.seeded_uniform(6, (12,))
    expected = graddrop_numpy(grads, np.sign(rep.reshape(2, 12)), draw, np.zeros(2))
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)
