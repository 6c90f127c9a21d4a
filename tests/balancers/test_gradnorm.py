import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import GradNorm


def _reference_step(w, jac, losses, initial, alpha, lr):
    """NumPy GradNorm step: returns the weights after the update."""
    norms = np.linalg.norm(jac, axis=1)
    g = w * norms
    ratios = losses / initial
    r = ratios / ratios.mean()
    target = g.mean() * r**alpha
    grad = np.sign(g - target) * norms
    new = np.maximum(w - lr * grad, 1e-6 * len(w))
    return len(w) * new / new.sum()


def _toy(steps=8, seed=0):
    """A two-task toy: the last shared layer W (3 x 2), quadratic task losses."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(2, 3, 2))
    out = []
    weights = rng.normal(size=(3, 2))
    for _ in range(steps):
        diff = weights[None] - a
        losses = 0.5 * np.array([1.0, 4.0]) * np.sum(diff**2, axis=(1, 2))
        jac = (np.array([1.0, 4.0])[:, None, None] * diff).reshape(2, -1)
        out.append((jac.astype("float32"), losses.astype("float32")))
        weights = weights - 0.05 * jac.sum(0).reshape(3, 2)
    return out


def test_weight_updates_match_numpy_on_a_two_task_toy():
    steps = _toy()
    b = GradNorm(alpha=1.5, learning_rate=0.05)
    w = np.ones(2)
    initial = steps[0][1]
    for jac, losses in steps:
        result = b.aggregate(jac, losses)
        np.testing.assert_allclose(result.weights, w, rtol=1e-5)
        np.testing.assert_allclose(result.direction, w @ jac, rtol=1e-5)
        w = _reference_step(w, jac, losses, initial, 1.5, 0.05)
        np.testing.assert_allclose(np.array(b.weights_state), w, rtol=1e-5)
        assert abs(float(np.sum(b.weights_state)) - 2.0) < 1e-5
    assert not np.allclose(w, 1.0)


def test_closed_form_gradient_equals_autodiff_of_the_gradnorm_loss():
    jac, losses = _toy()[0]
    b = GradNorm(alpha=0.5, learning_rate=0.01)
    b.build(2)
    b.weights_state.assign([1.3, 0.7])
    b.initial_losses.assign([2.0, 1.0])
    b.initialized.assign([1.0, 1.0])
    w = tf.Variable([1.3, 0.7])
    with tf.GradientTape() as tape:
        g = w * tf.norm(jac, axis=1)
        ratios = losses / np.array([2.0, 1.0], "float32")
        target = tf.stop_gradient(tf.reduce_mean(g)) * (ratios / ratios.mean()) ** 0.5
        loss = tf.reduce_sum(tf.abs(g - target))
    stepped = w.numpy() - 0.01 * tape.gradient(loss, w).numpy()
    b.aggregate(jac, losses)
    np.testing.assert_allclose(np.array(b.weights_state), 2 * stepped / stepped.sum(), rtol=1e-5)


def test_first_positive_loss_is_the_initial_loss_and_zero_rows_are_safe():
    b = GradNorm()
    jac = np.array([[1.0, 0.0], [0.0, 0.0]])
    for losses in ([2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1e-8, 1e6]):
        r = b.aggregate(jac, losses)
        assert np.all(np.isfinite(r.weights)) and np.all(np.isfinite(r.direction))
    np.testing.assert_allclose(np.array(b.initial_losses), [2.0, 1e6])
    assert np.all(np.isfinite(np.array(b.weights_state)))


def test_state_restore_graph_mode_config_and_validation():
    steps = _toy(seed=1)
    eager = GradNorm()
    expected = [np.asarray(eager.aggregate(j, loss).weights) for j, loss in steps]
    b = GradNorm()
    b.build(2)
    fn = tf.function(lambda j, loss: b.aggregate(j, loss).weights)
    for (j, loss), w in zip(steps[:4], expected[:4], strict=True):
        np.testing.assert_allclose(fn(j, loss), w, rtol=1e-5)
    copy = balancers.deserialize(balancers.serialize(b))
    if not copy.built:
        copy.build(2)
    for v, w in zip(copy.variables, b.variables, strict=True):
        v.assign(w)
    for (j, loss), w in zip(steps[4:], expected[4:], strict=True):
        np.testing.assert_allclose(copy.aggregate(j, loss).weights, w, rtol=1e-5)
    assert GradNorm.requires_jacobian and b.jacobian_scope == "last_shared_layer"
    shared = GradNorm(jacobian_scope="shared", alpha=0.12)
    again = balancers.get(balancers.serialize(shared))
    assert again.jacobian_scope == "shared" and again.get_config() == shared.get_config()
    with pytest.raises(ValueError, match="needs the Jacobian"):
        GradNorm().aggregate(None, [1.0, 1.0])
    with pytest.raises(ValueError, match="Received: jacobian_scope='all'"):
        GradNorm(jacobian_scope="all")
    # The paper's NYUv2 alpha (as in LibMTL) and the documented learning rate.
    assert (GradNorm().alpha, GradNorm().learning_rate) == (1.5, 0.025)
    with pytest.raises(ValueError, match="Received: alpha=-1"):
        GradNorm(alpha=-1)


def test_a_negative_loss_has_training_rate_zero():
    # L = [-0.5, 2] against L(0) = [1, 1]: ratios clipped to [0, 2], rates
    # [0, 2]; norms [3, 1], Gbar = 2, targets [0, 2 * 2^1.5]; the closed-form
    # gradient sign(G - target) * norms = [3, -1] steps w = [1, 1] to
    # [0.7, 1.1], renormalised to sum to 2 (no NaN from (-0.5)^1.5).
    b = GradNorm(alpha=1.5, learning_rate=0.1)
    b.build(2)
    b.initialized.assign([1.0, 1.0])
    b.aggregate(np.array([[3.0, 0.0], [0.0, 1.0]]), np.array([-0.5, 2.0]))
    np.testing.assert_allclose(np.array(b.weights_state), [1.4 / 1.8, 2.2 / 1.8], rtol=1e-6)


def test_a_task_without_a_first_loss_counts_as_training_rate_one():
    # Task 0 has no labels yet (loss 0, no L(0)): its ratio is 1, so the
    # others' rates stay 1 (not 1.5, which a ratio 0 would give). Norms
    # [0, 2, 1.2], Gbar = 3.2 / 3, targets Gbar: gradient [0, 2, 1.2] and
    # w = [1, 0.8, 0.88] renormalised to sum to 3.
    b = GradNorm(alpha=1.0, learning_rate=0.1)
    jac = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.2]])
    b.aggregate(jac, np.array([0.0, 2.0, 1.0]))
    np.testing.assert_allclose(
        np.array(b.weights_state), 3 * np.array([1.0, 0.8, 0.88]) / 2.68, rtol=1e-6
    )
