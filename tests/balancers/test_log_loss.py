import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_mtl import balancers
from keras_mtl.balancers import (
    DTP,
    DWA,
    MGDA,
    RLW,
    Balancer,
    BalanceResult,
    GradNorm,
    InitialLossNormalization,
    LogLoss,
    StaticWeighting,
    UncertaintyWeighting,
)


class _Normalize(Balancer):
    """A tiny Jacobian method: each task gradient scaled to unit norm; records its inputs."""

    requires_jacobian = True
    preferred_gradient_mode = "representation"
    seen = None

    def compute(self, jacobian, losses, representation=None):
        if not hasattr(jacobian, "graph"):
            _Normalize.seen = (np.asarray(jacobian), np.asarray(losses), representation)
        weights = 1.0 / ops.sqrt(ops.sum(jacobian * jacobian, axis=1))
        return BalanceResult(ops.matmul(weights[None], jacobian)[0], weights)


class _LearnedScale(Balancer):
    """A loss method with trainable log-weights `s` and auxiliary loss
    `sum_t s_t L_t` (LogLoss refuses uncertainty weighting, whose objective
    is unbounded for negative log-losses)."""

    def build(self, num_tasks):
        super().build(num_tasks)
        self.s = self.add_weight(name="s", shape=(num_tasks,), initializer="zeros")

    def compute(self, jacobian, losses, representation=None):
        weights = ops.exp(ops.convert_to_tensor(self.s))
        return BalanceResult(None if jacobian is None else weights @ jacobian, weights)

    def auxiliary_loss(self, losses):
        return ops.sum(ops.convert_to_tensor(self.s) * ops.convert_to_tensor(losses))


THETA = np.array([0.5, -1.0, 2.0], "float32")


def _losses_and_jacobian(theta):
    theta = tf.Variable(theta)
    with tf.GradientTape(persistent=True) as tape:
        rows = [tf.reduce_sum(tf.square(theta)) * 3.0, tf.exp(theta[0] - theta[2]), theta[1] ** 2]
    jac = np.stack([tape.gradient(r, theta).numpy() for r in rows])
    return theta, tape, rows, np.array([float(r) for r in rows]), jac


def test_direction_is_the_gradient_of_the_summed_log_losses():
    eps = 1e-3
    theta, tape, rows, losses, jac = _losses_and_jacobian(THETA)
    with tape:
        objective = tf.add_n([tf.math.log(r + eps) for r in rows])
    expected = tape.gradient(objective, theta).numpy()
    result = LogLoss(epsilon=eps).aggregate(jac, losses)
    np.testing.assert_allclose(result.direction, expected, rtol=1e-5)
    np.testing.assert_allclose(result.weights, 1.0 / (losses + eps), rtol=1e-6)


def test_wrapping_a_jacobian_method_rescales_each_task_gradient():
    _, _, _, losses, jac = _losses_and_jacobian(THETA)
    eps = 1e-8
    b = LogLoss(_Normalize())
    assert b.requires_jacobian and b.preferred_gradient_mode == "representation"
    rep = np.ones((2, 2), "float32")
    result = b.aggregate(jac, losses, representation=rep)
    seen_jac, seen_losses, seen_rep = _Normalize.seen
    np.testing.assert_allclose(seen_jac, jac / (losses + eps)[:, None], rtol=1e-5)
    np.testing.assert_allclose(seen_losses, np.log(losses + eps), rtol=1e-5, atol=1e-6)
    assert seen_rep is rep
    inner_w = 1.0 / np.linalg.norm(seen_jac, axis=1)
    np.testing.assert_allclose(result.weights, inner_w / (losses + eps), rtol=1e-5)
    np.testing.assert_allclose(result.direction, inner_w @ seen_jac, rtol=1e-5)
    # Log-scale: multiplying a loss (and its gradient) by 1000 changes nothing.
    scale = np.array([1000.0, 1.0, 1.0])
    scaled = LogLoss(_Normalize()).aggregate(jac * scale[:, None], losses * scale)
    np.testing.assert_allclose(scaled.direction, result.direction, rtol=1e-4)


def test_wrapping_a_loss_method():
    b = LogLoss(StaticWeighting([2.0, 1.0]), epsilon=0.5)
    assert not b.requires_jacobian
    np.testing.assert_allclose(b.aggregate(None, [1.5, 0.5]).weights, [1.0, 1.0], rtol=1e-6)
    assert b.aggregate(None, [1.5, 0.5]).direction is None


def test_hooks_and_auxiliary_loss_are_forwarded():
    learned = _LearnedScale()
    b = LogLoss(learned, epsilon=1e-8)
    losses = np.array([2.0, 0.5], "float32")
    b.build(2)
    learned.s.assign([0.5, -0.5])
    assert b.trainable_variables == [learned.s]
    expected = np.sum(np.array([0.5, -0.5]) * np.log(losses))
    np.testing.assert_allclose(float(b.auxiliary_loss(losses)), expected, rtol=1e-5)
    np.testing.assert_allclose(
        b.aggregate(None, losses).weights, np.exp([0.5, -0.5]) / losses, rtol=1e-5
    )
    # Around a positive transform, uncertainty weighting's objective is bounded.
    uw = UncertaintyWeighting()
    normalized = InitialLossNormalization(uw)
    normalized.build(2)
    assert normalized.trainable_variables == [uw.log_variances]

    dwa = LogLoss(DWA())
    dwa.build(2)
    dwa.aggregate(None, [1.0, 1.0])
    dwa.on_epoch_begin(1)
    assert float(dwa.inner.completed_epochs) == 1.0

    dtp = LogLoss(DTP(kpi={"b": "binary_accuracy"}, alpha=1.0, gamma=0.0))
    dtp.set_task_names(["a", "b"])
    assert dtp.inner.task_names == ["a", "b"]
    dtp.build(2)
    dtp.observe({"b": np.array([[1.0], [0.0]])}, {"b": np.array([[0.9], [0.9]])}, None)
    # Inner DTP sees log-losses: KPI of `a` is exp(-log 2) = 1/2, of `b` accuracy 1/2.
    weights = np.asarray(dtp.aggregate(None, [2.0, 4.0]).weights)
    np.testing.assert_allclose(weights, -np.log(0.5) / np.array([2.0, 4.0]), rtol=1e-5)
    assert set(dtp.logs()) == {"a_kpi", "b_kpi"}


def test_a_task_without_labels_stays_at_loss_zero_for_the_inner_balancer():
    # Loss 0 is how balancers recognise a batch without a task's labels; the
    # inner one saw log(1e-8) = -18.4 and, e.g., an inner objective for the
    # absent task got a -18.4 term.
    jac = np.array([[1.0, 0.0], [0.0, 0.0]], "float32")
    LogLoss(_Normalize()).aggregate(jac, [2.0, 0.0])
    np.testing.assert_allclose(_Normalize.seen[1], [np.log(2.0), 0.0], rtol=1e-6)
    learned = _LearnedScale()
    b = LogLoss(learned)
    b.build(2)
    learned.s.assign([0.5, -0.5])
    expected = 0.5 * np.log(2.0)  # the absent task adds nothing
    np.testing.assert_allclose(float(b.auxiliary_loss([2.0, 0.0])), expected, rtol=1e-5)


def test_extreme_losses_give_finite_weights():
    for losses in ([0.0, 1.0], [1e-8, 1e6], [0.0, 0.0]):
        for b in (LogLoss(), LogLoss(_Normalize())):
            jac = np.array([[1.0, 0.0], [0.0, 1.0]])
            r = b.aggregate(jac, losses)
            assert np.all(np.isfinite(r.weights)) and np.all(np.isfinite(r.direction))


def test_config_round_trip_with_inner():
    b = LogLoss(DWA(temperature=3.0), epsilon=1e-6)
    again = balancers.deserialize(balancers.serialize(b))
    assert isinstance(again, LogLoss) and isinstance(again.inner, DWA)
    assert again.inner.temperature == 3.0 and again.epsilon == 1e-6
    assert again.get_config() == b.get_config()
    short = balancers.get({"class_name": "log", "config": {"inner": "ew"}})
    assert type(short.inner).__name__ == "EqualWeighting"
    assert LogLoss().get_config()["inner"] is None
    with pytest.raises(ValueError, match="Received: epsilon=0"):
        LogLoss(epsilon=0)
    with pytest.raises(ValueError, match="Received: inner=3"):
        LogLoss(inner=3)


def test_wrapping_issue_5_gradient_methods():
    jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], "float32")
    # L + eps = 1: the log-loss gradients equal the raw ones (torchjd's reference value).
    ones = np.float32(1.0) - np.float32(1e-8)
    r = LogLoss(balancers.PCGrad()).aggregate(jac, [ones, ones])
    np.testing.assert_allclose(r.direction, [0.5848, 3.8012, 3.8012], atol=1e-4)
    losses = np.array([2.0, 0.5], "float32")
    scaled = jac / (losses + 1e-8)[:, None]
    r = LogLoss(balancers.MGDA()).aggregate(jac, losses)
    inner = balancers.MGDA().aggregate(scaled, np.log(losses))
    np.testing.assert_allclose(r.direction, inner.direction, rtol=1e-5)
    np.testing.assert_allclose(r.weights, np.asarray(inner.weights) / losses, rtol=1e-5)


def test_wrapper_takes_the_inner_gradient_needs():
    # The engine reads these from the wrapper: a cvxpy or Dirichlet inner
    # method cannot be compiled with XLA, and GradNorm's weights need the
    # Jacobian of the last shared layer only.
    for wrapper in (LogLoss, InitialLossNormalization):
        assert wrapper(MGDA(solver="cvxpy")).supports_jit is False
        assert wrapper(RLW(distribution="dirichlet")).supports_jit is False
        assert wrapper(MGDA()).supports_jit is True
        assert wrapper(GradNorm()).jacobian_scope == "last_shared_layer"
        assert wrapper(GradNorm(jacobian_scope="shared")).jacobian_scope == "shared"
        assert wrapper("mgda_ub").preferred_gradient_mode == "representation"
