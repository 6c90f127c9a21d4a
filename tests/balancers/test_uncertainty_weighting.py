import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import UncertaintyWeighting


def _s_gradient(balancer, losses):
    """Gradient w.r.t. s of the engine's objective sum(stop(w) L) + aux(stop(L))."""
    losses = tf.constant(losses, tf.float32)
    with tf.GradientTape() as tape:
        weights = tf.stop_gradient(balancer.aggregate(None, losses).weights)
        objective = tf.reduce_sum(weights * losses) + balancer.auxiliary_loss(losses)
    return tape.gradient(objective, balancer.log_variances).numpy()


@pytest.mark.parametrize("regression_form, factor", [(False, 1.0), (True, 0.5)])
def test_weights_and_closed_form_gradient_of_the_log_variances(regression_form, factor):
    s = np.array([0.3, -1.2], "float32")
    losses = np.array([2.0, 0.25], "float32")
    b = UncertaintyWeighting(regression_form=regression_form)
    b.build(2)
    b.log_variances.assign(s)
    np.testing.assert_allclose(b.aggregate(None, losses).weights, factor * np.exp(-s), rtol=1e-6)
    # d/ds [c (exp(-s) L + s)] = c (1 - exp(-s) L)
    np.testing.assert_allclose(
        _s_gradient(b, losses), factor * (1.0 - np.exp(-s) * losses), rtol=1e-5
    )
    aux = float(b.auxiliary_loss(losses))
    np.testing.assert_allclose(aux, factor * np.sum(np.exp(-s) * losses + s), rtol=1e-6)


def test_direction_and_trainable_state():
    b = UncertaintyWeighting(initial_log_variance=np.log(4.0))
    jac = np.array([[1.0, 2.0], [3.0, -1.0]])
    r = b.aggregate(jac, [1.0, 1.0])
    np.testing.assert_allclose(r.direction, 0.25 * jac.sum(0), rtol=1e-6)
    assert [v.name for v in b.trainable_variables] == ["log_variances"]
    assert b.non_trainable_variables == []


def test_gradient_descent_on_s_reaches_log_loss():
    # The minimiser of exp(-s) L + s is s = log L.
    b = UncertaintyWeighting()
    b.build(2)
    losses = np.array([0.5, 3.0], "float32")
    for _ in range(400):
        b.log_variances.assign_sub(0.1 * _s_gradient(b, losses))
    np.testing.assert_allclose(np.array(b.log_variances), np.log(losses), atol=1e-4)


def test_config_round_trip_and_validation():
    b = UncertaintyWeighting(regression_form=True, initial_log_variance=0.5, name="uw_x")
    again = balancers.deserialize(balancers.serialize(b))
    assert isinstance(again, UncertaintyWeighting)
    assert again.get_config() == b.get_config()
    assert isinstance(balancers.get("uw"), UncertaintyWeighting)
    with pytest.raises(ValueError, match="Received: regression_form=1"):
        UncertaintyWeighting(regression_form=1)
    with pytest.raises(ValueError, match="Received: initial_log_variance=inf"):
        UncertaintyWeighting(initial_log_variance=float("inf"))


@pytest.mark.parametrize("regression_form, factor", [(False, 1.0), (True, 0.5)])
def test_a_batch_without_a_tasks_labels_leaves_its_log_variance_alone(regression_form, factor):
    # Loss 0 is a batch without the task's labels: Kendall et al.'s objective
    # is the likelihood of the observed labels, so the task adds no term, and
    # the regulariser alone would push s_t down (its weight up) at every such
    # batch. NumPy transcription over the tasks that have labels:
    # d/ds_t c (exp(-s_t) L_t + s_t) = c (1 - exp(-s_t) L_t) if L_t != 0, else 0.
    s = np.array([0.3, -1.2, 0.5], "float32")
    losses = np.array([2.0, 0.0, 0.25], "float32")
    b = UncertaintyWeighting(regression_form=regression_form)
    b.build(3)
    b.log_variances.assign(s)
    present = losses != 0.0
    expected = np.where(present, factor * (1.0 - np.exp(-s) * losses), 0.0)
    np.testing.assert_allclose(_s_gradient(b, losses), expected, rtol=1e-5, atol=1e-7)
    aux = float(b.auxiliary_loss(losses))
    np.testing.assert_allclose(aux, factor * np.sum(present * (np.exp(-s) * losses + s)), rtol=1e-6)
