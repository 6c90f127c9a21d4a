"""IMTL: impartial multi-task learning."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import register_balancer
from keras_mtl.balancers.gramian import GramianBalancer
from keras_mtl.balancers.imtl_l import _scale_objective

MODES = ("hybrid", "gradient")


@register_balancer("imtl")
class IMTL(GramianBalancer):
    """Impartial MTL: the update has equal projections on every task's unit
    gradient (IMTL-G), optionally with IMTL-L's learned loss scales.

    IMTL-G finds `alpha` (summing to 1) such that `g = sum_t alpha_t g_t` has
    the same inner product with every unit gradient `u_t = g_t / |g_t|`
    (the paper's closed form `alpha_{2:T} = g_1 U^T (D U^T)^{-1}`, rows
    `D_t = g_1 - g_t`, `U_t = u_1 - u_t`, solves the same conditions). Here
    they are one `(T + 1) x (T + 1)` linear system in `alpha` and the common
    projection, a function of the Gramian, solved in float64 (not
    inverted). A task whose gradient is exactly zero (a batch without its
    labels) has no unit gradient: it gets weight 0 and the other tasks are
    balanced among themselves. A singular system (for example two identical
    gradients) gives equal weights.

    `mode="hybrid"` (the paper's full IMTL) adds IMTL-L: a trainable scale
    `s_t` per task, the task loss becomes `exp(s_t) L_t - s_t` (trained through
    `auxiliary_loss`), IMTL-G runs on the scaled gradients `exp(s_t) g_t`, and
    the weights are `alpha_t exp(s_t)` (the same parameterisation as
    `keras_mtl.balancers.IMTLL`, which is IMTL-L alone; as there, a task
    whose loss is exactly 0, a batch without its labels, adds no term to the
    scales' objective). `mode="gradient"` is IMTL-G alone.

    Args:
        mode: `"hybrid"` (IMTL) or `"gradient"` (IMTL-G).
        name: name of the balancer.

    Raises:
        ValueError: for an unknown `mode`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import IMTL
    >>> r = IMTL(mode="gradient").aggregate(np.array([[2.0, 0.0], [0.0, 1.0]]), np.ones(2))
    >>> np.round(np.asarray(r.direction, dtype=float), 4).tolist()
    [0.6667, 0.6667]

    References:
        Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    """

    # IMTL-G's conditions are homogeneous in the gradients.
    scale_invariant = True

    def __init__(self, mode: str = "hybrid", name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        if mode not in MODES:
            raise ValueError(
                f"Received an invalid value for `mode`, expected one of {list(MODES)}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        if self.mode == "hybrid":
            self.loss_scale = self.add_weight(
                name="loss_scale", shape=(num_tasks,), initializer="zeros", trainable=True
            )

    def _scales(self):
        if self.mode == "hybrid":
            return ops.exp(ops.convert_to_tensor(self.loss_scale))
        return ops.ones((self.num_tasks,))

    def gramian_weights(self, gram, losses):
        num = self.num_tasks
        scales = self._scales()
        if num == 1:
            return scales
        gram = solvers.normalize_gramian(gram * scales[:, None] * scales[None, :])
        # float64: with gradient norms 1e6 apart, alpha_1 = 1 - sum(alpha_2:)
        # is ~1e-6 and float32 cancellation left the projections 27 % apart.
        gram = ops.cast(gram, "float64")
        norms = ops.sqrt(ops.maximum(ops.diagonal(gram), 0.0))
        # A zero gradient (a task without labels in the batch) has no unit
        # vector: it gets weight 0 and the others share equal projections.
        # Kept in, it took all the weight and the step was zero.
        present = norms > 0
        present = ops.logical_or(present, ops.logical_not(ops.any(present)))
        # gu[a, b] = <g_a, u_b>. Unknowns alpha and the common projection c:
        # <sum_s alpha_s g_s, u_t> = c for the present tasks, alpha_t = 0 for
        # the others, sum(alpha) = 1: the paper's conditions in one system.
        gu = solvers.safe_divide(gram, norms[None, :])
        eye = ops.eye(num, dtype="float64")
        rows = ops.where(present[:, None], ops.transpose(gu), eye)
        last = ops.where(present, -1.0, 0.0)[:, None]
        system = ops.concatenate(
            [
                ops.concatenate([rows, ops.cast(last, "float64")], axis=1),
                ops.concatenate([ops.ones((1, num), "float64"), ops.zeros((1, 1), "float64")], 1),
            ],
            axis=0,
        )
        rhs = ops.concatenate([ops.zeros((num, 1), "float64"), ops.ones((1, 1), "float64")], 0)
        solution, ok = solvers.guarded_solve(system, rhs)
        equal = ops.cast(present, "float32") / ops.sum(ops.cast(present, "float32"))
        alpha = ops.where(ok, ops.cast(solution[:num, 0], "float32"), equal)
        return alpha * scales

    def auxiliary_loss(self, losses):
        if self.mode != "hybrid":
            return super().auxiliary_loss(losses)
        losses = ops.convert_to_tensor(losses, dtype="float32")
        if not self.built:
            self.build(int(losses.shape[0]))
        return _scale_objective(self.loss_scale, losses)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
