"""Geometric loss strategy: minimise the geometric mean of the task losses."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_number,
    register_balancer,
    weighted_direction,
)


@register_balancer("gls", "geometric_loss_strategy")
class GLS(Balancer):
    """Geometric Loss Strategy (Chennupati et al.): `(prod_t L_t)^(1/T)`.

    The gradient of the geometric mean `GM` is `sum_t GM / (T L_t) grad L_t`,
    so the effective weights are `w_t = GM / (T L_t)`: a task with a small
    loss is up-weighted, and the update's direction is invariant to
    rescaling any single loss (its length scales by `c^(1/T)`). The weights
    are computed in log space.

    A task whose loss is not above `epsilon` (in practice 0: a batch without
    its labels) is left out of the mean for that step and gets weight 0;
    `T` is then the number of tasks that take part. If no task takes part,
    all weights are 0.

    Args:
        epsilon: losses `<= epsilon` are left out, a non-negative float.
        name: name of the balancer.

    Raises:
        ValueError: if `epsilon` is negative or not finite.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import GLS
    >>> w = np.asarray(GLS().aggregate(None, np.array([1.0, 4.0])).weights)
    >>> np.round(w, 4).tolist()  # GM = 2: [2 / (2 * 1), 2 / (2 * 4)]
    [1.0, 0.25]

    References:
        Chennupati, Sistu, Yogamani and Rawashdeh, "MultiNet++: Multi-Stream
        Feature Aggregation and Geometric Loss Strategy for Multi-Task
        Learning", CVPR Workshops 2019.
    """

    def __init__(self, epsilon: float = 0.0, name: str | None = None, **kwargs):
        check_number("epsilon", epsilon, "a non-negative float", lambda v: v < 0)
        super().__init__(name=name, **kwargs)
        self.epsilon = float(epsilon)

    def compute(self, jacobian, losses, representation=None):
        present = ops.cast(losses > self.epsilon, "float32")
        count = ops.sum(present)
        # log(1) = 0 for absent tasks, so they drop out of the sum.
        safe = ops.where(present > 0.0, losses, ops.ones_like(losses))
        log_losses = ops.log(safe)
        log_mean = ops.sum(log_losses * present) / ops.maximum(count, 1.0)
        weights = present * ops.exp(log_mean - log_losses) / ops.maximum(count, 1.0)
        return BalanceResult(weighted_direction(weights, jacobian), weights)

    def get_config(self) -> dict:
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config
