"""PCGrad: projecting conflicting gradients."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import check_seed, register_balancer
from keras_mtl.balancers.gramian import GramianBalancer


def random_orders(num_tasks: int, seed_generator):
    """`(T, T)` int matrix whose row `i` is a random permutation of the tasks
    (task `i` visits the others in that order).

    Args:
        num_tasks: number of tasks `T`.
        seed_generator: the `keras.random.SeedGenerator` to draw from.

    Returns:
        `(T, T)` int tensor, each row an independent permutation of
        `0, ..., T - 1`.

    Example:

    >>> import keras, numpy as np
    >>> from keras_mtl.balancers.pcgrad import random_orders
    >>> orders = np.asarray(random_orders(3, keras.random.SeedGenerator(0)))
    >>> np.sort(orders, axis=1).tolist()
    [[0, 1, 2], [0, 1, 2], [0, 1, 2]]
    """
    noise = keras.random.uniform((num_tasks, num_tasks), seed=seed_generator)
    return ops.argsort(noise, axis=1)


@register_balancer("pcgrad")
class PCGrad(GramianBalancer):
    """Gradient surgery: each task gradient is projected off the gradients it
    conflicts with, in random order, and the results are summed.

    For every task `i`, `g_i'` starts at `g_i`; for each other task `j` in a
    random order, if `<g_i', g_j> < 0` then `g_i' -= <g_i', g_j> / |g_j|^2 g_j`.
    The direction is `sum_i g_i'`. As in torchjd, the projections are done on
    the Gramian: `g_i'` is kept as a weight vector `c_i` with `g_i' = c_i^T J`,
    so `<g_i', g_j> = (G c_i)_j`, and the direction is `(sum_i c_i)^T J`, the
    same vector as the classic algorithm (Algorithm 1 of the paper, which
    skips `j = i`) at a fraction of the cost. Each task draws its own order
    from a seeded `keras.random.SeedGenerator`.

    Args:
        seed: seed of the random task orders (`None`: unseeded).
        name: name of the balancer.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import PCGrad
    >>> jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> r = PCGrad(seed=0).aggregate(jac, np.ones(2))
    >>> np.round(np.asarray(r.direction, dtype=float), 4).tolist()
    [0.5848, 3.8012, 3.8012]

    References:
        Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
    """

    # The weights depend on the Gramian only through the normalised one.
    scale_invariant = True

    def __init__(self, seed: int | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.seed = check_seed(seed)

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="seed_generator")

    def gramian_weights(self, gram, losses):
        num = self.num_tasks
        gram = solvers.normalize_gramian(gram)
        orders = random_orders(num, self.seed_generator)
        diag = ops.diagonal(gram)
        rows = ops.arange(num)

        def body(k, coef):
            other = orders[:, k]
            pick = ops.one_hot(other, num)
            inner = ops.sum(ops.matmul(pick, gram) * coef, axis=1)
            norm2 = ops.sum(pick * diag[None, :], axis=1)
            active = (inner < 0) & (other != rows) & (norm2 > 0)
            step = ops.where(active, solvers.safe_divide(inner, norm2), 0.0)
            return coef - step[:, None] * pick

        coef = ops.fori_loop(0, num, body, ops.eye(num))
        return ops.sum(coef, axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}
