"""DB-MTL: dual-balancing multi-task learning."""

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


@register_balancer("db_mtl", "dbmtl")
class DBMTL(Balancer):
    """Dual balancing: log-transformed losses (loss-scale balancing) and
    per-task gradients rescaled to a common magnitude (gradient balancing).

    Algorithm 1 of the paper, step `k = 1, 2, ...`:

    1. `g_t = grad log(L_t + eps) = grad L_t / (L_t + eps)`: the rows of `J`
       divided by `L_t + eps`.
    2. `m_t <- b_k m_t + (1 - b_k) g_t` with `b_k = beta / k^sigma`
       (`m_t` starts at 0).
    3. `d = sum_t (max_s |m_s| / |m_t|) m_t`: every moving-average gradient
       rescaled to the largest norm, then summed.

    Task-specific variables are updated with the gradient of `log(L_t + eps)`
    (weights `1 / (L_t + eps)`, what this balancer reports as weights). The
    logged `loss`, `sum_t w_t L_t`, is then close to T at every step: monitor
    the `<task>_loss` logs instead (`mode="min"` in Keras callbacks).
    The losses must be non-negative, as in the paper: for `L_t + eps < 0`
    the logarithm is undefined (LibMTL gives NaN) and the factor
    `1 / (L_t + eps)` is negative, which turns that task's descent into
    ascent; wrap such a loss (a cosine similarity, a Gaussian NLL) so that
    it is non-negative first.
    The moving averages `(T, P)` and the step `k` are state variables. The
    number of shared parameters `P` is only known at the first call, so the
    moving-average variable is created then (and, on loading a saved model,
    from the stored `num_params` in the config).

    With `gradient_mode="representation"` (`representation` given), rows of
    `J` belong to different examples at every step, so a moving average of
    them has no meaning: the moving average is then taken of the per-task
    gradient norms only (state `(T,)`), and `d = sum_t (max_s n_s / n_t) g_t`
    with `n_t` the averaged norms. This is a documented variant, not the
    paper's algorithm.

    Args:
        beta: moving-average rate in `[0, 1)` (0.9).
        sigma: decay exponent of the rate, `>= 0` (0: constant rate).
        eps: added to the losses before the logarithm (1e-8).
        num_params: number of shared parameters (set automatically).
        name: name of the balancer.

    Raises:
        ValueError: for invalid arguments, or a Jacobian whose width changes.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import DBMTL
    >>> r = DBMTL(eps=0.0).aggregate(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([1.0, 0.5]))
    >>> np.round(np.asarray(r.direction, dtype=float), 4).tolist()
    [0.2, 0.2]

    References:
        Lin et al., "Dual-Balancing for Multi-Task Learning", 2023
        (arXiv:2308.12029).
    """

    requires_jacobian = True

    def __init__(
        self,
        beta: float = 0.9,
        sigma: float = 0.0,
        eps: float = 1e-8,
        num_params: int | None = None,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.beta = check_number("beta", beta, "a number in [0, 1)", lambda v: not 0 <= v < 1)
        self.sigma = check_number("sigma", sigma, "a non-negative number", lambda v: v < 0)
        self.eps = check_number("eps", eps, "a non-negative number", lambda v: v < 0)
        self.num_params = check_positive_int("num_params", num_params, allow_none=True)
        self.moving_gradients = None

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.step = self.add_state("step", ())
        self.moving_norms = self.add_state("moving_norms", (num_tasks,))
        if self.num_params is not None:
            self._create_moving_gradients(self.num_params)

    def prepare(self, num_params: int) -> None:
        if self.moving_gradients is None:
            self._create_moving_gradients(int(num_params))

    def _create_moving_gradients(self, num_params: int) -> None:
        self.num_params = num_params
        # Keras locks a built layer's state; this variable's shape is only
        # known now, so it is added explicitly.
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self.moving_gradients = self.add_state("moving_gradients", (self.num_tasks, num_params))
        finally:
            if locked:
                self._tracker.lock()

    def compute(self, jacobian, losses, representation=None):
        inv = 1.0 / (losses + self.eps)
        k = self.step + 1.0
        rate = self.beta / ops.power(k, self.sigma)
        self.step.assign(k)
        if representation is not None:
            grads = jacobian * inv[:, None]
            norms = solvers.row_norms(grads)
            moving = rate * self.moving_norms + (1.0 - rate) * norms
            self.moving_norms.assign(moving)
            scale = ops.max(moving) / (moving + 1e-8)
            direction = weighted_direction(scale, grads)
            return BalanceResult(direction, inv)
        num_params = jacobian.shape[1]
        if self.moving_gradients is None:
            if num_params is None:
                raise ValueError(
                    "DBMTL creates its moving averages from the number of Jacobian columns, "
                    "expected a Jacobian whose number of columns is known when traced. "
                    f"Received: jacobian with shape {tuple(jacobian.shape)}"
                )
            self._create_moving_gradients(int(num_params))
        elif num_params != self.num_params:
            # Also for a width unknown when traced: a width of 1 would
            # broadcast against the averages.
            raise ValueError(
                f"This DBMTL keeps moving averages of {self.num_params} parameters, expected a "
                f"Jacobian of shape ({self.num_tasks}, {self.num_params}). Received: jacobian "
                f"with shape {tuple(jacobian.shape)}"
            )
        # One scale per row, so J is read once: m <- b m + (1 - b) J / (L + eps).
        moving = rate * self.moving_gradients + ((1.0 - rate) * inv)[:, None] * jacobian
        self.moving_gradients.assign(moving)
        norms = solvers.row_norms(moving)
        self.moving_norms.assign(norms)
        scale = ops.max(norms) / (norms + 1e-8)
        direction = weighted_direction(scale, moving)
        return BalanceResult(direction, inv)

    def load_own_variables(self, store) -> None:
        # A model saved after training holds the moving averages, which this
        # (freshly built) balancer creates only on its first call.
        extra = str(len(self.variables))
        if self.moving_gradients is None and extra in store.keys():
            shape = store[extra].shape
            # Anything else is another balancer's state, which the base skips.
            if len(shape) == 2 and shape[0] == self.num_tasks:
                self._create_moving_gradients(int(shape[1]))
        super().load_own_variables(store)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "beta": self.beta,
            "sigma": self.sigma,
            "eps": self.eps,
            "num_params": self.num_params,
        }
