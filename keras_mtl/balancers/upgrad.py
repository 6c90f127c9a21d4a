"""UPGrad: unconflicting projection of gradients."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import check_number, register_balancer
from keras_mtl.balancers.gramian import GramianBalancer


def dual_cone_gramian(gram, reg_eps: float):
    """torchjd's preprocessing: `G / trace(G) + reg_eps I` (zero `G` stays
    zero before the ridge). Dividing by the trace for every scale (torchjd
    zeroes Gramians whose trace is below `1e-4`, which gives the mean
    weights; see `UPGrad`) keeps the projection exact for tiny gradients.

    Args:
        gram: `(T, T)` Gramian.
        reg_eps: ridge added to the diagonal after the normalisation.

    Returns:
        The `(T, T)` float32 regularised matrix.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.upgrad import dual_cone_gramian
    >>> out = dual_cone_gramian(np.array([[3.0, 1.0], [1.0, 1.0]]), reg_eps=0.01)
    >>> np.round(np.asarray(out, dtype=float), 6).tolist()
    [[0.76, 0.25], [0.25, 0.26]]
    >>> np.round(np.asarray(dual_cone_gramian(np.zeros((2, 2)), 0.01), dtype=float), 6).tolist()
    [[0.01, 0.0], [0.0, 0.01]]

    References:
        Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
        2024 (arXiv:2406.16232).
    """
    gram = ops.cast(gram, "float32")
    trace = ops.sum(ops.diagonal(gram))
    gram = gram / ops.where(trace > 0, trace, 1.0)
    return gram + reg_eps * ops.eye(gram.shape[0])


def check_reg_eps(reg_eps) -> float:
    """Validates UPGrad's and DualProj's `reg_eps`.

    Args:
        reg_eps: the value received.

    Returns:
        `reg_eps` as a Python float.

    Raises:
        ValueError: when `reg_eps` is not a non-negative finite number.

    Example:

    >>> from keras_mtl.balancers.upgrad import check_reg_eps
    >>> check_reg_eps(0)
    0.0
    >>> check_reg_eps(-1e-4)
    Traceback (most recent call last):
    ...
    ValueError: Received an invalid value for `reg_eps`, expected a non-negative number. Received: reg_eps=-0.0001
    """
    return check_number("reg_eps", reg_eps, "a non-negative number", lambda v: v < 0)


@register_balancer("upgrad")
class UPGrad(GramianBalancer):
    """Projects every task gradient onto the dual cone of all task gradients
    (the set of directions that conflict with none) and averages them.

    The projection of `u^T J` onto the cone `{d : <d, g_t> >= 0 for all t}` is
    `v^T J` with `v = argmin_{v >= u} v^T G v` (a `T`-dimensional QP, solved
    in-graph by an exact active-set method); UPGrad averages the projections
    of the `T` gradients, so its weights are `(1/T) sum_i v_i` and
    `<d, g_t> >= 0` for every task. As torchjd, the Gramian is normalised by
    its trace and regularised by `reg_eps` (1e-4) before the projections.

    Difference from torchjd: torchjd replaces a Gramian whose trace (the sum
    of the squared gradient norms) is below `norm_eps = 1e-4` by zero, so
    that for such small gradients its projections do nothing and the weights
    are the mean weights `1/T` (plain averaging, conflicts included). Here
    the Gramian is divided by its trace at every scale: the weights depend
    only on the directions and relative norms of the gradients (`J` and
    `1e-6 J` give the same weights), and the update stays non-conflicting
    when the gradients are small, as late in training. Only a zero Jacobian
    gives the mean weights (as in torchjd). Gradients whose Gramian
    overflows float32 (norms above about 1.8e19) are handled by a
    power-of-two rescaling (`GramianBalancer`), with the same weights.

    Args:
        reg_eps: ridge added to the normalised Gramian.
        name: name of the balancer.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import UPGrad
    >>> r = UPGrad().aggregate(np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]), np.ones(2))
    >>> np.round(np.asarray(r.direction, dtype=float), 4).tolist()
    [0.2929, 1.9004, 1.9004]

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
        projected = solvers.lower_bounded_qp(gram, ops.eye(num) / num)
        return ops.sum(projected, axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "reg_eps": self.reg_eps}
