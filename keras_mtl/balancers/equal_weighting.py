"""Equal weighting: the plain sum of task losses."""

from keras import ops

from keras_mtl.balancers.base import Balancer, BalanceResult, register_balancer, weighted_direction


@register_balancer("ew", "equal", "equal_weighting")
class EqualWeighting(Balancer):
    """Sums the task losses (every weight is 1).

    The update is exactly the one plain Keras takes for a multi-output model
    whose losses are summed, at the cost of one backward pass.

    Args:
        name: name of the balancer.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import EqualWeighting
    >>> r = EqualWeighting().aggregate(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([0.5, 0.1]))
    >>> np.asarray(r.direction).tolist()
    [1.0, 2.0]

    References:
        Caruana, "Multitask Learning", Machine Learning 28, 1997.
    """

    def compute(self, jacobian, losses, representation=None):
        weights = ops.ones_like(losses)
        return BalanceResult(weighted_direction(weights, jacobian), weights)
