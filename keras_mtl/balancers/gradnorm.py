"""GradNorm: task weights that equalise the training rates of the tasks."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_number,
    register_balancer,
    weighted_direction,
)

SCOPES = ("last_shared_layer", "shared")


@register_balancer("gradnorm", "grad_norm")
class GradNorm(Balancer):
    """Gradient Normalization (Chen et al.): balance gradient norms by training rate.

    The task weights `w` (state, initially 1) scale the task losses. Each
    step, with `g_t` the gradient of `L_t` with respect to the last shared
    layer's weights (the paper's choice), the weighted norms are
    `G_t = w_t ||g_t||`, their mean is `Gbar`, the relative inverse training
    rates are `r_t = Ltilde_t / mean(Ltilde)` with `Ltilde_t = L_t / L_t(0)`,
    and the GradNorm loss is

    `L_grad = sum_t |G_t - Gbar r_t^alpha|`

    with the targets `Gbar r_t^alpha` held constant, as in the paper. Its
    gradient with respect to `w_t` is `sign(G_t - Gbar r_t^alpha) ||g_t||`,
    computed in closed form; the weights take one gradient-descent step of
    size `learning_rate`, are kept positive, and are renormalised to sum to
    `T`. The current step uses the weights from before the update (the
    update applies from the next step), and its direction is `w^T J`.

    `L_t(0)` is the task's first positive loss (a first batch without its
    labels is skipped), kept in state. Inside `MultiTaskModel` the Jacobian
    covers the last shared layer only and the model takes one backward pass
    of `sum_t w_t L_t`; with `jacobian_scope="shared"` the norms are taken
    over all shared variables and the direction is applied to them.

    Args:
        alpha: asymmetry, a non-negative float (1.5 in the paper's NYUv2
            experiments and in LibMTL).
        learning_rate: step size of the weight update, a positive float.
        jacobian_scope: `"last_shared_layer"` (default) or `"shared"`.
        name: name of the balancer.

    Raises:
        ValueError: for a negative `alpha`, a non-positive `learning_rate` or
            an unknown `jacobian_scope`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import GradNorm
    >>> b = GradNorm(learning_rate=0.1)
    >>> jacobian = np.array([[3.0, 0.0], [0.0, 1.0]])
    >>> np.asarray(b.aggregate(jacobian, np.array([1.0, 1.0])).weights).tolist()
    [1.0, 1.0]
    >>> print(np.round(np.asarray(b.weights_state), 4))  # [1 - 0.3, 1 + 0.1], sum to 2
    [0.7778 1.2222]

    References:
        Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient
        Normalization for Adaptive Loss Balancing in Deep Multitask
        Networks", ICML 2018.
    """

    requires_jacobian = True
    jacobian_scope = "last_shared_layer"

    def __init__(
        self,
        alpha: float = 1.5,
        learning_rate: float = 0.025,
        jacobian_scope: str = "last_shared_layer",
        name: str | None = None,
        **kwargs,
    ):
        alpha = check_number("alpha", alpha, "a non-negative float", lambda v: v < 0)
        learning_rate = check_number(
            "learning_rate", learning_rate, "a positive float", lambda v: v <= 0
        )
        if jacobian_scope not in SCOPES:
            raise ValueError(
                f"Received an invalid value for `jacobian_scope`, expected one of "
                f"{list(SCOPES)}. Received: jacobian_scope={jacobian_scope!r}"
            )
        super().__init__(name=name, **kwargs)
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.jacobian_scope = jacobian_scope

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.weights_state = self.add_state("task_weights", (num_tasks,), initializer="ones")
        self.initial_losses = self.add_state("initial_losses", (num_tasks,), initializer="ones")
        self.initialized = self.add_state("initialized", (num_tasks,))

    def compute(self, jacobian, losses, representation=None):
        first = ops.logical_and(self.initialized <= 0.0, losses > 0.0)
        initial = ops.where(first, losses, self.initial_losses)
        initialized = ops.where(first, 1.0, self.initialized)
        self.initial_losses.assign(initial)
        self.initialized.assign(initialized)

        weights = ops.copy(self.weights_state)
        # Not sqrt(sum(J^2)), which overflows float32 for norms above ~1.8e19.
        norms = solvers.row_norms(jacobian)
        ratios = ops.where(initialized > 0.0, losses / ops.maximum(initial, 1e-30), 1.0)
        # A negative loss (e.g. a log-loss below 0 when wrapped) has rate 0, so
        # that `rates ** alpha` stays real.
        ratios = ops.maximum(ratios, 0.0)
        rates = ratios / ops.maximum(ops.mean(ratios), 1e-30)
        weighted_norms = weights * norms
        targets = ops.mean(weighted_norms) * ops.power(rates, self.alpha)
        gradient = ops.sign(weighted_norms - targets) * norms
        num_tasks = float(self.num_tasks)
        # Weights stay positive (a zero weight could never recover).
        stepped = ops.maximum(weights - self.learning_rate * gradient, 1e-6 * num_tasks)
        self.weights_state.assign(num_tasks * stepped / ops.sum(stepped))
        return BalanceResult(weighted_direction(weights, jacobian), weights)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            alpha=self.alpha, learning_rate=self.learning_rate, jacobian_scope=self.jacobian_scope
        )
        return config
