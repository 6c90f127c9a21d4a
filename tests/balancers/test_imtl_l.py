import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import IMTLL


def test_weights_and_closed_form_gradient_of_the_scales():
    s = np.array([0.4, -0.7, 0.0], "float32")
    losses = tf.constant([2.0, 0.5, 1.0])
    b = IMTLL()
    b.build(3)
    b.scales.assign(s)
    np.testing.assert_allclose(b.aggregate(None, losses).weights, np.exp(s), rtol=1e-6)
    with tf.GradientTape() as tape:
        weights = tf.stop_gradient(b.aggregate(None, losses).weights)
        objective = tf.reduce_sum(weights * losses) + b.auxiliary_loss(losses)
    # d/ds [exp(s) L - s] = exp(s) L - 1
    np.testing.assert_allclose(
        tape.gradient(objective, b.scales), np.exp(s) * losses.numpy() - 1.0, rtol=1e-5
    )
    np.testing.assert_allclose(
        float(b.auxiliary_loss(losses)), np.sum(np.exp(s) * losses.numpy() - s), rtol=1e-6
    )


def test_scaled_losses_are_equalised_at_the_optimum():
    b = IMTLL()
    losses = tf.constant([0.2, 5.0])
    b.build(2)
    for _ in range(300):
        with tf.GradientTape() as tape:
            aux = b.auxiliary_loss(losses)
        b.scales.assign_sub(0.1 * tape.gradient(aux, b.scales))
    scaled = np.exp(np.array(b.scales)) * losses.numpy()
    np.testing.assert_allclose(scaled, [1.0, 1.0], atol=1e-4)


def test_direction_config_and_validation():
    b = IMTLL(initial_scale=np.log(2.0))
    jac = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(b.aggregate(jac, [1.0, 1.0]).direction, [4.0, 2.0], rtol=1e-6)
    again = balancers.get(balancers.serialize(b))
    assert isinstance(again, IMTLL) and again.get_config() == b.get_config()
    assert isinstance(balancers.get("imtl_l"), IMTLL)
    with pytest.raises(ValueError, match="Received: initial_scale=nan"):
        IMTLL(initial_scale=float("nan"))


def test_a_batch_without_a_tasks_labels_leaves_its_scale_alone():
    # Loss 0 is a batch without the task's labels; the term -s_t alone would
    # raise s_t (the task's weight) at every such batch. NumPy transcription of
    # d/ds_t (exp(s_t) L_t - s_t) over the tasks that have labels:
    s = np.array([0.4, -0.7, 0.0], "float32")
    losses = np.array([2.0, 0.0, 1.5], "float32")
    b = IMTLL()
    b.build(3)
    b.scales.assign(s)
    with tf.GradientTape() as tape:
        aux = b.auxiliary_loss(tf.constant(losses))
    present = losses != 0.0
    expected = np.where(present, np.exp(s) * losses - 1.0, 0.0)
    np.testing.assert_allclose(tape.gradient(aux, b.scales), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(aux), np.sum(present * (np.exp(s) * losses - s)), rtol=1e-6)
