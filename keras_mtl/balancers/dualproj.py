"""DualProj: the average gradient projected onto the dual cone."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import register_balancer
from keras_mtl.balancers.gramian import GramianBalancer
from keras_mtl.balancers.upgrad import check_reg_eps, dual_cone_gramian


@register_balancer("dualproj")
class DualProj(GramianBalancer):
    """Projects the average gradient onto the dual cone of the task gradients
    (the set of directions that conflict with no task).

    The weights are `v = argmin_{v >= 1/T} v^T G v`, so `<d, g_t> >= 0` for
    every task. The Gramian is normalised and regularised as in `UPGrad`.

    Difference from torchjd (as for `UPGrad`): torchjd zeroes a Gramian whose
    trace is below `norm_eps = 1e-4` and then returns the mean weights `1/T`
    (the plain average, conflicts included); here the Gramian is divided by
    its trace at every scale, so `J` and `1e-6 J` give the same weights and
    small gradients are still projected. Only a zero Jacobian gives the mean
    weights.

    Args:
        reg_eps: ridge added to the normalised Gramian.
        name: name of the balancer.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import DualProj
    >>> r = DualProj(reg_eps=0.0).aggregate(np.array([[1.0, 0.0], [0.0, 1.0]]), np.ones(2))
    >>> np.round(np.asarray(r.direction, dtype=float), 4).tolist()
    [0.5, 0.5]

    References:
        Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
        2024 (arXiv:2406.16232).
    """

    # The Gramian is divided by its trace at every scale (see above).
    scale_invariant = True

    def __init__(self, reg_eps: float = 1e-4, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.reg_eps = check_reg_eps(reg_eps)

    def gramian_weights(self, gram, losses):
        num = self.num_tasks
        gram = dual_cone_gramian(gram, self.reg_eps)
        return solvers.lower_bounded_qp(gram, ops.ones((1, num)) / num)[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "reg_eps": self.reg_eps}
