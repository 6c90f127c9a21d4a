"""Aligned-MTL: aligning the principal components of the task gradients."""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import register_balancer
from keras_mtl.balancers.gramian import GramianBalancer

SCALE_MODES = ("min", "median", "rmse")


@register_balancer("aligned_mtl")
class AlignedMTL(GramianBalancer):
    """Makes the system of task gradients well conditioned before summing.

    With `G = V diag(l) V^T` (eigenvalues above the rank tolerance
    `max(l) T eps`), the aligned gradients are `J^T W`,
    `W = V diag(sqrt(s / l)) V^T`: their Gramian is `s` times the identity on
    the span of the gradients (condition number 1). The scale `s` is the
    smallest eigenvalue (`"min"`, the official default), the lower median
    (`"median"`) or the mean (`"rmse"`) of the retained eigenvalues. The
    update is the sum of the aligned gradients, `(W 1)^T J`, so the weights
    are `W 1`.

    Args:
        scale_mode: `"min"`, `"median"` or `"rmse"`.
        name: name of the balancer.

    Raises:
        ValueError: for an unknown `scale_mode`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import AlignedMTL
    >>> r = AlignedMTL().aggregate(np.array([[2.0, 0.0], [0.0, 1.0]]), np.ones(2))
    >>> np.round(np.asarray(r.direction, dtype=float), 4).tolist()
    [1.0, 1.0]

    References:
        Senushkin et al., "Independent Component Alignment for Multi-Task
        Learning", CVPR 2023.
    """

    # `sqrt(s / l)` is a ratio of the Gramian's eigenvalues.
    scale_invariant = True

    def __init__(self, scale_mode: str = "min", name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        if scale_mode not in SCALE_MODES:
            raise ValueError(
                f"Received an invalid value for `scale_mode`, expected one of "
                f"{list(SCALE_MODES)}. Received: scale_mode={scale_mode!r}"
            )
        self.scale_mode = scale_mode

    def gramian_weights(self, gram, losses):
        num = self.num_tasks
        gram = ops.cast(solvers.normalize_gramian(gram), "float64")
        # TensorFlow's eigh raises on a NaN or infinity, in a graph too: the
        # training step would fail instead of giving the non-finite update
        # that `nonfinite="skip"` skips. Such a Gramian gets NaN weights.
        finite = ops.all(ops.isfinite(gram))
        gram = ops.where(finite, gram, ops.eye(num, dtype="float64"))
        values, vectors = ops.eigh(gram)  # ascending
        tol = ops.max(values) * num * float(np.finfo(np.float32).eps)
        kept = values > tol
        rank = ops.sum(ops.cast(kept, "int32"))
        safe = ops.where(kept, values, 1.0)
        if self.scale_mode == "min":
            scale = ops.min(ops.where(kept, values, np.inf))
        elif self.scale_mode == "median":
            # The kept eigenvalues are the top `rank` ones; torch's (lower) median.
            index = num - rank + (rank - 1) // 2
            scale = ops.take(values, ops.clip(index, 0, num - 1))
        else:
            scale = ops.sum(ops.where(kept, values, 0.0)) / ops.cast(
                ops.maximum(rank, 1), "float64"
            )
        factors = ops.where(kept, ops.sqrt(ops.maximum(scale, 0.0) / safe), 0.0)
        weights_matrix = ops.matmul(vectors * factors[None, :], ops.transpose(vectors))
        weights = ops.sum(weights_matrix, axis=1)
        weights = ops.where(rank > 0, weights, 0.0)
        return ops.cast(ops.where(finite, weights, np.nan), "float32")

    def get_config(self) -> dict:
        return {**super().get_config(), "scale_mode": self.scale_mode}
