import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import GLS


def test_weights_are_geometric_mean_over_task_loss():
    losses = np.array([0.3, 2.0, 7.5])
    gm = np.prod(losses) ** (1 / 3)
    np.testing.assert_allclose(GLS().aggregate(None, losses).weights, gm / (3 * losses), rtol=1e-5)


def test_direction_is_the_gradient_of_the_geometric_mean():
    theta = tf.Variable([0.5, -1.0, 2.0])

    def task_losses():
        return tf.stack(
            [
                tf.reduce_sum(tf.square(theta)),
                tf.exp(theta[0] - theta[2]) + 0.1,
                1.0 + theta[1] ** 2,
            ]
        )

    with tf.GradientTape(persistent=True) as tape:
        losses = task_losses()
        rows = [losses[i] for i in range(3)]
        gm = tf.reduce_prod(losses) ** (1.0 / 3.0)
    jac = np.stack([tape.gradient(r, theta).numpy() for r in rows])
    result = GLS().aggregate(jac, losses)
    np.testing.assert_allclose(result.direction, tape.gradient(gm, theta), rtol=1e-5)


def test_zero_loss_leaves_the_task_out():
    w = np.asarray(GLS().aggregate(None, [0.0, 4.0, 1.0]).weights)
    # GM over the two present tasks: 2; weights GM / (2 L).
    np.testing.assert_allclose(w, [0.0, 0.25, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(GLS().aggregate(None, [0.0, 0.0]).weights, [0.0, 0.0])
    w = np.asarray(GLS(epsilon=1e-3).aggregate(None, [1e-4, 1.0]).weights)
    np.testing.assert_allclose(w, [0.0, 1.0])


def test_config_and_validation():
    b = GLS(epsilon=1e-6)
    again = balancers.get(balancers.serialize(b))
    assert isinstance(again, GLS) and again.epsilon == 1e-6
    assert isinstance(balancers.get("gls"), GLS)
    with pytest.raises(ValueError, match="Received: epsilon=-1"):
        GLS(epsilon=-1)


@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e30])
def test_weights_do_not_depend_on_a_common_scale_of_the_losses(scale):
    # w_t = GM / (T L_t) is invariant to scaling all losses, in log space even
    # where the product of the losses under- or overflows float32.
    w = np.asarray(GLS().aggregate(None, scale * np.array([1.0, 4.0, 2.0])).weights)
    np.testing.assert_allclose(w, [2.0 / 3.0, 1.0 / 6.0, 1.0 / 3.0], rtol=1e-5)
