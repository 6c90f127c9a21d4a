"""Initial loss normalisation: each loss divided by its first value."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers.base import register_balancer
from keras_mtl.balancers.log_loss import _LossTransform


@register_balancer("initial_loss", "initial_loss_normalization")
class InitialLossNormalization(_LossTransform):
    """Optimises `sum_t L_t / L_t(0)`, each loss relative to its first value.

    `L_t(0)` is task `t`'s loss on the first step where it is positive (a
    first batch without the task's labels gives loss 0 and is skipped), kept
    in state so that it survives saving and resuming. Until then the task has
    weight 1. The effective weights are `1 / L_t(0)`.

    Like `LogLoss`, it can wrap another balancer: the inner method sees the
    normalised losses `L_t / L_t(0)` and the Jacobian with row `t` divided by
    `L_t(0)`; the effective weights are its weights divided by `L_t(0)`.

    Args:
        inner: `None`, or the balancer to wrap (an instance, a name or a
            config dict).
        name: name of the balancer.

    Raises:
        ValueError: for an invalid `inner`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import InitialLossNormalization
    >>> b = InitialLossNormalization()
    >>> np.asarray(b.aggregate(None, np.array([2.0, 0.5])).weights).tolist()
    [0.5, 2.0]
    >>> np.asarray(b.aggregate(None, np.array([1.0, 1.0])).weights).tolist()
    [0.5, 2.0]

    References:
        The loss ratio `L_t / L_t(0)` is the inverse training rate of Chen et
        al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
        Deep Multitask Networks", ICML 2018.
    """

    def build(self, num_tasks: int) -> None:
        # The own state first: `super().build` also builds the inner balancer.
        self.initial_losses = self.add_state("initial_losses", (num_tasks,), initializer="ones")
        self.initialized = self.add_state("initialized", (num_tasks,))
        super().build(num_tasks)

    def _update(self, losses) -> None:
        first = ops.logical_and(self.initialized <= 0.0, losses > 0.0)
        self.initial_losses.assign(ops.where(first, losses, self.initial_losses))
        self.initialized.assign(ops.where(first, 1.0, self.initialized))

    def _transform(self, losses):
        # `initial_losses` is 1 until set and positive afterwards; the floor
        # keeps a denormal first loss from giving an infinite weight.
        scales = 1.0 / ops.maximum(self.initial_losses, 1e-30)
        return losses * scales, scales
