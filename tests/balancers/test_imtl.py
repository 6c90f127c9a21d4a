import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import IMTL
from tests.balancers import gradient_checks as checks


def imtl_g_numpy(jac):
    """IMTL-G with explicit vectors and an explicit inverse (paper's formula)."""
    units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    d = jac[0] - jac[1:]
    u = units[0] - units[1:]
    rest = jac[0] @ u.T @ np.linalg.inv(d @ u.T)
    return np.concatenate([[1 - rest.sum()], rest])


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
def test_matches_numpy_and_equal_projections(num_tasks):
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, 12)) * rng.uniform(0.1, 10.0, size=(num_tasks, 1))
    d, w = checks.run(IMTL(mode="gradient"), jac)
    np.testing.assert_allclose(w, imtl_g_numpy(jac), rtol=1e-4, atol=1e-5)
    projections = (jac / np.linalg.norm(jac, axis=1, keepdims=True)) @ d
    np.testing.assert_allclose(projections, projections[0], rtol=1e-4)
    assert abs(w.sum() - 1) < 1e-5


@pytest.mark.parametrize("ratio", [1e6, 1e7])
def test_equal_projections_with_gradient_norms_orders_apart(ratio):
    # alpha_1 = 1 - sum(alpha_2:) is ~1 / ratio here: in float32 the
    # projections on the unit gradients came out 27 % apart at 1e6.
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(3, 200)) * [[ratio], [1.0], [1.0]]
    d, alpha = checks.run(IMTL(mode="gradient"), jac)
    units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    projections = units @ np.asarray(d, dtype=np.float64)
    np.testing.assert_allclose(projections, projections.mean(), rtol=1e-5)
    np.testing.assert_allclose(alpha, imtl_g_numpy(jac), rtol=1e-4, atol=1e-9)


def test_hybrid_scales_gradients_and_trains_scales():
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(3, 6))
    b = IMTL()
    b.build(3)
    scales = np.array([0.3, -0.2, 0.1], np.float32)
    b.loss_scale.assign(scales)
    d, w = checks.run(b, jac)
    scaled = jac * np.exp(scales)[:, None]
    expected = imtl_g_numpy(scaled) * np.exp(scales)
    np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d, w @ jac, rtol=1e-4, atol=1e-5)
    losses = np.array([1.0, 2.0, 0.5], np.float32)
    aux = float(b.auxiliary_loss(losses))
    np.testing.assert_allclose(aux, np.sum(np.exp(scales) * losses - scales), rtol=1e-6)
    assert [v.name for v in b.trainable_variables] == ["loss_scale"]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = b.auxiliary_loss(tf.constant(losses))
    grad = np.asarray(tape.gradient(value, b.loss_scale.value))
    np.testing.assert_allclose(grad, np.exp(scales) * losses - 1, rtol=1e-5)


def test_singular_system_falls_back_to_equal_weights():
    g = np.array([1.0, 2.0, 3.0])
    d, w = checks.run(IMTL(mode="gradient"), np.stack([g, g, g]))
    np.testing.assert_allclose(w, np.ones(3) / 3, rtol=1e-6)


def test_properties():
    checks.check_permutation_equivariance(lambda: IMTL(mode="gradient"))
    checks.check_finite(IMTL)
    checks.check_graph_and_jit(IMTL, num_tasks=(2, 4))


def test_config_and_validation():
    restored = checks.check_config_round_trip(IMTL(mode="gradient"), IMTL)
    assert restored.mode == "gradient"
    assert isinstance(balancers.get("imtl"), IMTL)
    with pytest.raises(ValueError, match="mode"):
        IMTL(mode="loss")


def test_hybrid_batch_without_a_tasks_labels_leaves_its_scale_alone():
    # As in IMTL-L: loss 0 (no labels in the batch) adds no -s_t term, which
    # alone would raise that task's scale at every such batch.
    import tensorflow as tf

    b = IMTL()
    b.build(3)
    scales = np.array([0.3, -0.2, 0.1], np.float32)
    b.loss_scale.assign(scales)
    losses = np.array([1.0, 0.0, 0.5], np.float32)
    with tf.GradientTape() as tape:
        value = b.auxiliary_loss(tf.constant(losses))
    grad = np.asarray(tape.gradient(value, b.loss_scale.value))
    np.testing.assert_allclose(grad, [np.exp(0.3) - 1, 0.0, np.exp(0.1) * 0.5 - 1], rtol=1e-5)


def test_hybrid_with_one_task_weights_it_by_its_loss_scale():
    # One task: IMTL-G has alpha = 1, so the weight is the IMTL-L scale exp(s)
    # (the same alpha_t exp(s_t) as with more tasks), not 1.
    b = IMTL()
    b.build(1)
    b.loss_scale.assign([0.5])
    d, w = checks.run(b, [[2.0, -1.0]])
    np.testing.assert_allclose(w, [np.exp(0.5)], rtol=1e-6)
    np.testing.assert_allclose(d, np.exp(0.5) * np.array([2.0, -1.0]), rtol=1e-6)


@pytest.mark.parametrize("num_tasks, absent", [(2, [0]), (3, [1]), (4, [0, 2])])
def test_a_zero_gradient_gets_weight_zero_and_the_others_equal_projections(num_tasks, absent):
    # A task without labels has a zero row (no unit gradient); it took all
    # the weight and the direction was zero.
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, 6))
    jac[absent] = 0.0
    present = [t for t in range(num_tasks) if t not in absent]
    d, alpha = checks.run(IMTL(mode="gradient"), jac)
    np.testing.assert_allclose(alpha[absent], 0.0, atol=1e-7)
    expected = imtl_g_numpy(jac[present]) if len(present) > 1 else [1.0]
    np.testing.assert_allclose(alpha[present], expected, rtol=1e-4)
    units = jac[present] / np.linalg.norm(jac[present], axis=1, keepdims=True)
    projections = units @ np.asarray(d, dtype=np.float64)
    np.testing.assert_allclose(projections, projections.mean(), rtol=1e-5)
    assert projections.mean() > 0
