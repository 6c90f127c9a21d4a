"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_integer,
    check_number,
    register_balancer,
)

SOLVERS = ("graph", "cvxpy")


@register_balancer("cagrad")
class CAGrad(Balancer):
    """Conflict-averse gradient: the direction within a ball around the
    average gradient `g0` that maximises the worst task improvement.

    `max_d min_t <g_t, d>` s.t. `|d - g0| <= c |g0|`. Its dual,
    `min_{w in simplex} <g_w, g0> + c |g0| |g_w|` with `g_w = sum_t w_t g_t`,
    is a `T`-dimensional problem on the Gramian; the update is
    `d = g0 + (c |g0| / |g_w|) g_w`, divided by `1 + c^2` (`rescale=1`, the
    official default), `1 + c` (`rescale=2`) or not at all (`rescale=0`),
    and multiplied by `T` as the official code does "to match the sum loss"
    (so `c = 0` gives equal weighting's sum of gradients). As in the official
    code, `|g0|` and `|g_w|` are the norms of the vectors `g0` and `g_w`
    (not of `w^T G w`, which loses the digits of a tiny `|g_w|` near a
    Pareto-stationary point), so the update always stays in the ball. There
    `c |g0| / |g_w|` is large, and so are the logged weights
    `T (1/T + lam w) / f`, whose combination still is the bounded update.

    `solver="graph"` (default) solves the dual in-graph (accelerated
    projected gradient started at the min-norm point); `solver="cvxpy"` uses
    the cvxpy second-order-cone form of the dual (the reference; host-side,
    not under XLA), falling back to the in-graph result on failure, counted
    in the `<name>_solver_failures` log.

    Args:
        c: the radius `c >= 0` (0.4 in the paper's and official experiments).
        rescale: 0, 1 or 2, see above.
        solver: `"graph"` or `"cvxpy"`.
        name: name of the balancer.

    Raises:
        ValueError: for a negative `c`, or an unknown `rescale` or `solver`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import CAGrad
    >>> r = CAGrad(c=0.0).aggregate(np.eye(2), np.ones(2))
    >>> np.round(np.asarray(r.direction, dtype=float), 4).tolist()
    [1.0, 1.0]

    References:
        Liu et al., "Conflict-Averse Gradient Descent for Multi-task
        Learning", NeurIPS 2021.
    """

    requires_jacobian = True

    def __init__(
        self,
        c: float = 0.4,
        rescale: int = 1,
        solver: str = "graph",
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        c = check_number("c", c, "a non-negative number", lambda v: v < 0)
        rescale = check_integer("rescale", rescale, "0, 1 or 2", lambda v: v not in (0, 1, 2))
        if solver not in SOLVERS:
            raise ValueError(
                f"Received an invalid value for `solver`, expected one of {list(SOLVERS)}. "
                f"Received: solver={solver!r}"
            )
        self.c = c
        self.rescale = rescale
        self.solver = solver
        self.supports_jit = solver == "graph"

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.solver_failures = self.add_state("solver_failures", ())

    def compute(self, jacobian, losses, representation=None):
        num = self.num_tasks
        # J J^T = s^2 raw; s = 1 unless J J^T would overflow (or underflow).
        raw, s = solvers.scaled_gramian(jacobian)
        gram = solvers.normalize_gramian(raw)
        w = solvers.cagrad_weights(gram, self.c)
        if self.solver == "cvxpy":
            w, failed = solvers.cvxpy_or_fallback(
                lambda g: solvers.cagrad_weights_cvxpy(g, self.c), w, gram
            )
            self.solver_failures.assign_add(failed)
        basis = ops.stack([ops.ones((num,)) / num, w])
        # g0 and g_w as vectors, and their norms from them: near a Pareto-
        # stationary point, `w^T G w` (a float32 Gramian) has lost every digit
        # of the tiny |g_w|, and `c |g0| / |g_w|` times the actual g_w would
        # leave the ball |d - g0| <= c |g0| by orders of magnitude.
        vectors = ops.einsum("kt,tp->kp", basis, jacobian)
        # On the scale of the normalised Gramian, as the guard below assumes.
        norms = solvers.row_norms(vectors) / (s * ops.sqrt(solvers.gramian_scale(raw)))
        g0_norm, gw_norm = norms[0], norms[1]
        # The official code's 1e-8 guard, on the normalised scale.
        lam = self.c * g0_norm / (gw_norm + 1e-8)
        factor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        coefficients = num * ops.stack([ops.ones_like(lam), lam]) / factor
        direction = ops.einsum("k,kp->p", coefficients, vectors)
        return BalanceResult(direction, ops.einsum("k,kt->t", coefficients, basis))

    def logs(self) -> dict:
        if self.solver != "cvxpy" or not self.built:
            return {}
        return {f"{self.name}_solver_failures": self.solver_failures.value}

    def get_config(self) -> dict:
        return {**super().get_config(), "c": self.c, "rescale": self.rescale, "solver": self.solver}
