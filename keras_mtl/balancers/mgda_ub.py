"""MGDA-UB: MGDA on the gradients of the shared representation."""

from __future__ import annotations

from keras_mtl.balancers.base import register_balancer
from keras_mtl.balancers.mgda import MGDA


@register_balancer("mgda_ub")
class MGDAUB(MGDA):
    """MGDA on the gradients with respect to the shared representation.

    The same method as `MGDA`, but `compile(gradient_mode="auto")` takes the
    task gradients with respect to the tensor marked by
    `keras_mtl.layers.SharedRepresentation` (one backward pass per task
    through the towers only), and the balanced representation gradient is
    backpropagated through the trunk once. Its weights minimise an upper
    bound of the MGDA objective (Sener & Koltun, Theorem 1). Without such a
    layer the model falls back to parameter gradients, i.e. plain MGDA.

    Args:
        normalization: see `MGDA`.
        solver: see `MGDA`.
        name: name of the balancer.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import MGDAUB
    >>> r = MGDAUB().aggregate(np.array([[1.0, 0.0], [0.0, 1.0]]), np.ones(2))
    >>> np.round(np.asarray(r.weights, dtype=float), 4).tolist()
    [0.5, 0.5]

    References:
        Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
        NeurIPS 2018.
    """

    preferred_gradient_mode = "representation"
