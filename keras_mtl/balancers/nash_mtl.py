"""Nash-MTL: multi-task learning as a bargaining game."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_number,
    check_positive_int,
    register_balancer,
    weighted_direction,
)

SOLVERS = ("graph", "cvxpy")


@register_balancer("nash_mtl", "nashmtl")
class NashMTL(Balancer):
    """The Nash bargaining solution of the tasks: `d = sum_t alpha_t g_t` with
    `alpha_t > 0` and `<g_t, d> = 1 / alpha_t` for every task.

    `alpha` solves the bargaining condition on the raw gradients, as the
    official code does: it divides the Gramian by its Frobenius norm `n` for
    the solver but keeps `n` in the constraint `alpha_i n (G alpha / n)_i >= 1`,
    so its `alpha` satisfies `alpha_i <g_i, d> = 1` and the direction has norm
    `sqrt(T)` at any gradient scale. Here the condition is solved on `G / n`
    (well scaled) and the solution divided by `sqrt(n)`, which is the same
    `alpha`. It multiplies the raw task losses (the logged weights scale like
    `1 / |g_t|`), and the shared direction is clipped to norm `max_norm`
    (`max_norm <= 0` disables clipping; task-specific variables are not
    clipped), so with the default `max_norm=1` and two or more tasks the
    shared update has norm 1. Weights are recomputed every `update_every` steps and reused in
    between (the paper's speed-up); the last `alpha` and the step count are
    state variables saved with the model.

    Solvers: `"graph"` (default) solves the condition in-graph by damped
    Newton on the convex function `0.5 a^T G a - sum log (G a)` (whose
    stationary points are exactly the bargaining solutions), warm-started at
    the previous `alpha`; `"cvxpy"` runs the paper's sequence of convex
    problems (`optim_niter` of them at most) on the host, not under XLA.
    When no solution exists (no direction improves every task, e.g. opposite
    gradients) or cvxpy fails, the previous `alpha` is kept, as in the
    official code, and the event is counted in `<name>_solver_failures`.

    Args:
        max_norm: clipping norm of the shared direction (official: 1.0); a
            value `<= 0` (e.g. `0.0`) disables clipping, as `if max_norm > 0`
            does in the official code and in LibMTL.
        update_every: recompute the weights every this many steps.
        optim_niter: maximum number of convex problems per cvxpy solve.
        solver: `"graph"` or `"cvxpy"`.
        name: name of the balancer.

    Raises:
        ValueError: for invalid arguments.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import NashMTL
    >>> r = NashMTL(max_norm=0.0).aggregate(np.array([[2.0, 0.0], [0.0, 1.0]]), np.ones(2))
    >>> np.round(np.asarray(r.weights, dtype=float), 4).tolist()
    [0.5, 1.0]

    References:
        Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
    """

    requires_jacobian = True

    def __init__(
        self,
        max_norm: float = 1.0,
        update_every: int = 1,
        optim_niter: int = 20,
        solver: str = "graph",
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        max_norm = check_number("max_norm", max_norm, "a finite number")
        update_every = check_positive_int("update_every", update_every)
        optim_niter = check_positive_int("optim_niter", optim_niter)
        if solver not in SOLVERS:
            raise ValueError(
                f"Received an invalid value for `solver`, expected one of {list(SOLVERS)}. "
                f"Received: solver={solver!r}"
            )
        self.max_norm = max_norm
        self.update_every = update_every
        self.optim_niter = optim_niter
        self.solver = solver
        self.supports_jit = solver == "graph"

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.alpha = self.add_state("alpha", (num_tasks,), initializer="ones")
        self.step = self.add_state("step", ())
        self.solver_failures = self.add_state("solver_failures", ())

    def _solve(self, gram, frobenius, scale):
        # `gram` is G / n (n = s^2 |G / s^2|_F, `frobenius` = |G / s^2|_F, s a
        # power of two that is 1 unless G overflows); alpha for G is alpha
        # for G / n over sqrt(n).
        root = scale * ops.sqrt(frobenius)
        previous = ops.convert_to_tensor(self.alpha)
        # (nash_weights rescales its warm start, so the raw previous alpha will do.)
        alpha, ok = solvers.nash_weights(gram, init=previous)
        ok = ops.logical_and(ok, frobenius > 0)
        alpha = ops.where(ok, alpha / ops.where(ok, root, 1.0), previous)
        failed = 1.0 - ops.cast(ok, "float32")
        if self.solver == "cvxpy":
            # The official sequence for G / n and n, run on sqrt(n) alpha
            # (see nash_weights_cvxpy).
            def host(g, a, n, s):
                # n s^2 in float64: it can exceed float32's range.
                n = float(n) * float(s) ** 2
                return solvers.nash_weights_cvxpy(g, a, self.optim_niter, normalization=n)

            alpha, failed = solvers.cvxpy_or_fallback(host, alpha, gram, previous, frobenius, scale)
        return alpha, failed

    def compute(self, jacobian, losses, representation=None):
        # G = s^2 gram: s = 1 unless G overflows float32 (|g| above ~1.8e19).
        gram, scale = solvers.scaled_gramian(jacobian)
        # Frobenius norm without overflow (|G|^2 overflows float32 from |g| ~ 1e10).
        frobenius = solvers.row_norms(ops.reshape(gram, (1, -1)))[0]
        frobenius = ops.where(ops.isfinite(frobenius), frobenius, 0.0)
        gram = gram / ops.where(frobenius > 0, frobenius, 1.0)
        update = ops.equal(ops.mod(self.step, float(self.update_every)), 0.0)
        if self.update_every == 1:
            alpha, failed = self._solve(gram, frobenius, scale)
        else:
            alpha, failed = ops.cond(
                update,
                lambda: self._solve(gram, frobenius, scale),
                lambda: (ops.convert_to_tensor(self.alpha), ops.zeros(())),
            )
        self.alpha.assign(alpha)
        self.step.assign_add(1.0)
        self.solver_failures.assign_add(failed)
        direction = weighted_direction(alpha, jacobian)
        if self.max_norm > 0:
            norm = solvers.row_norms(direction[None, :])[0]
            direction = direction * ops.minimum(1.0, self.max_norm / ops.maximum(norm, 1e-30))
        return BalanceResult(direction, alpha)

    def logs(self) -> dict:
        if not self.built:
            return {}
        return {f"{self.name}_solver_failures": self.solver_failures.value}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "max_norm": self.max_norm,
            "update_every": self.update_every,
            "optim_niter": self.optim_niter,
            "solver": self.solver,
        }
