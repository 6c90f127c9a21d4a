"""Base class of the balancers that are a function of the Gramian `J J^T`."""

from __future__ import annotations

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import Balancer, BalanceResult, weighted_direction


class GramianBalancer(Balancer):
    """A gradient method whose weights depend on the Jacobian only through
    its Gramian `G = J J^T` (T x T).

    `compute` forms `G` once, asks `gramian_weights(G, losses)` for the task
    weights `w` and returns the direction `w^T J`: one `T x T x P` and one
    `T x P` product instead of `O(T^2)` operations on `P`-vectors (PCGrad
    on full vectors is about 30x slower at `T = 40`, see PERF_NOTES.md).
    Subclasses implement `gramian_weights`.

    Subclasses whose weights are invariant to a common scale of the
    gradients (`G -> c G` leaves `w` unchanged) set `scale_invariant = True`:
    they then receive the Gramian of `J / s`, with `s` the power of two of
    `solvers.scaled_gramian`, which is 1 (so exactly `J J^T`) unless `J J^T`
    would overflow float32 (gradient norms above about 1.8e19) or underflow,
    and still give finite weights there. The others receive `J J^T`.

    Args:
        name: name of the balancer.
        **kwargs: other `Balancer` arguments.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> from keras_mtl.balancers.gramian import GramianBalancer
    >>> class InverseNorm(GramianBalancer):
    ...     def gramian_weights(self, gram, losses):
    ...         return 1.0 / ops.sqrt(ops.diagonal(gram))
    >>> r = InverseNorm().aggregate(np.array([[3.0, 4.0], [0.0, 2.0]]), np.ones(2))
    >>> np.asarray(r.direction, dtype=float).round(4).tolist()
    [0.6, 1.8]
    """

    requires_jacobian = True
    scale_invariant: bool = False

    def gramian_weights(self, gram, losses):
        """Task weights from the Gramian.

        Args:
            gram: `(T, T)` float32 Gramian `J J^T` (of `J / s` when
                `scale_invariant`, see the class docstring).
            losses: `(T,)` task losses.

        Returns:
            `(T,)` weights `w`; the direction is `w^T J`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `gramian_weights`.")

    def compute(self, jacobian, losses, representation=None):
        if self.scale_invariant:
            gram, _ = solvers.scaled_gramian(jacobian)
        else:
            gram = solvers.gramian(jacobian)
        weights = self.gramian_weights(gram, losses)
        return BalanceResult(weighted_direction(weights, jacobian), weights)
