"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import register_balancer
from keras_mtl.balancers.gramian import GramianBalancer

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
SOLVERS = ("graph", "cvxpy")


@register_balancer("mgda")
class MGDA(GramianBalancer):
    """Multiple-gradient descent: the update is the minimum-norm convex
    combination of the task gradients, which decreases every task loss
    (`<d, g_t> >= |d|^2` for all `t`) unless a convex combination vanishes
    (Pareto stationarity).

    The weights solve `min_{w in simplex} |sum_t w_t g_t / n_t|^2`, with the
    gradient normalisers `n_t` of the official code: `"none"` (1), `"l2"`
    (`|g_t|`), `"loss"` (`L_t`) or `"loss+"` (`L_t |g_t|`). As in the official
    code, the weights then multiply the *raw* task losses, so the direction is
    `sum_t w_t g_t` (with `"none"`, exactly the min-norm point).

    A task whose gradient is exactly zero (a batch without its labels) is
    left out of the hull and gets weight 0: no direction changes its loss to
    first order, so the min-norm point of the other tasks still improves
    every task that can be improved. Kept in, as in the official code, the
    zero vector would be the min-norm point and the whole step would stall.

    The in-graph solver is exact for two tasks and uses Wolfe's active-set
    algorithm otherwise (`keras_mtl.balancers.solvers.min_norm_weights`);
    `solver="cvxpy"` solves it with cvxpy on the host instead (not under
    XLA), falling back to the in-graph result when cvxpy fails and counting
    that in the `<name>_solver_failures` log.

    Args:
        normalization: one of `"none"`, `"l2"`, `"loss"`, `"loss+"`.
        solver: `"graph"` or `"cvxpy"`.
        name: name of the balancer.

    Raises:
        ValueError: for an unknown `normalization` or `solver`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import MGDA
    >>> r = MGDA().aggregate(np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]), np.ones(2))
    >>> np.round(np.asarray(r.direction, dtype=float), 4).tolist()[1:]
    [1.0, 1.0]
    >>> np.round(np.asarray(r.weights, dtype=float), 4).tolist()
    [0.6, 0.4]

    References:
        Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
        NeurIPS 2018. Désidéri, "Multiple-gradient descent algorithm (MGDA)
        for multiobjective optimization", 2012.
    """

    # Every normalisation divides the Gramian by its mean diagonal.
    scale_invariant = True

    def __init__(
        self, normalization: str = "none", solver: str = "graph", name: str | None = None, **kwargs
    ):
        super().__init__(name=name, **kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"Received an invalid value for `normalization`, expected one of "
                f"{list(NORMALIZATIONS)}. Received: normalization={normalization!r}"
            )
        if solver not in SOLVERS:
            raise ValueError(
                f"Received an invalid value for `solver`, expected one of {list(SOLVERS)}. "
                f"Received: solver={solver!r}"
            )
        self.normalization = normalization
        self.solver = solver
        self.supports_jit = solver == "graph"

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.solver_failures = self.add_state("solver_failures", ())

    def gramian_weights(self, gram, losses):
        norms = ops.sqrt(ops.maximum(ops.diagonal(gram), 0.0))
        if self.normalization == "l2":
            scale = norms
        elif self.normalization == "loss":
            scale = losses
        elif self.normalization == "loss+":
            scale = losses * norms
        else:
            scale = ops.ones_like(losses)
        # A zero normaliser (zero gradient or loss) leaves that gradient as is.
        scale = ops.where(ops.logical_and(scale > 0, ops.isfinite(scale)), scale, 1.0)
        if self.normalization == "none":
            normalized = solvers.normalize_gramian(gram)
        else:
            # Only the normalisers' ratios matter (the Gramian is normalised
            # next); in float64, so that tiny ones (two losses of 1e-25: their
            # product is 0 in float32) or ones far apart give no inf or NaN.
            scale = ops.cast(scale, "float64")
            scale = scale / ops.max(scale)
            ratio = ops.cast(gram, "float64") / (scale[:, None] * scale[None, :])
            mean = ops.mean(ops.diagonal(ratio))
            mean = ops.where(ops.logical_and(mean > 0, ops.isfinite(mean)), mean, 1.0)
            normalized = solvers.normalize_gramian(ratio / mean)
        # A zero gradient (a task without labels in the batch) constrains no
        # direction, <0, d> = 0 for all d; kept in the hull it would be the
        # min-norm point and stop every task.
        active = norms > 0
        weights = solvers.min_norm_weights(normalized, active=active)
        if self.solver == "cvxpy":
            weights, failed = solvers.cvxpy_or_fallback(
                solvers.min_norm_weights_cvxpy, weights, normalized, active
            )
            self.solver_failures.assign_add(failed)
        return weights

    def logs(self) -> dict:
        if self.solver != "cvxpy" or not self.built:
            return {}
        return {f"{self.name}_solver_failures": self.solver_failures.value}

    def get_config(self) -> dict:
        return {**super().get_config(), "normalization": self.normalization, "solver": self.solver}
