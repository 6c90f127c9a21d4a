"""GradVac: gradient vaccine."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import check_number, check_seed, register_balancer
from keras_mtl.balancers.gramian import GramianBalancer
from keras_mtl.balancers.pcgrad import random_orders


@register_balancer("gradvac")
class GradVac(GramianBalancer):
    """Gradient vaccine: pulls each pair of task gradients towards a target
    cosine similarity learned as a moving average.

    For each task `i` (state `g_i'`, starting at `g_i`) and each other task
    `j` in random order, with `phi = cos(g_i', g_j)` and target `phi_hat_ij`:
    if `phi < phi_hat_ij`,
    `g_i' += |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) /
    (|g_j| sqrt(1 - phi_hat^2)) g_j`; then
    `phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi` (targets start at 0, so
    at first GradVac behaves like PCGrad's projection). The update is
    `sum_i g_i'`. The target is updated at every visit of a pair, as in the
    paper's Algorithm 1; LibMTL (and SamsungLabs/MTL, copied from it) updates
    it only when `phi < phi_hat`, so its targets can only fall from 0. The
    similarities are over the whole shared Jacobian (LibMTL's default
    `GradVac_group_type=0`, "whole model"); the per-layer or per-matrix
    variants are not offered, since the Jacobian reaches the balancer
    flattened. Computed on the Gramian like `PCGrad`; the `T x T` targets
    are a state variable saved with the model, and the random orders come
    from a seeded `keras.random.SeedGenerator`.

    Args:
        beta: EMA rate of the targets, in `(0, 1]` (the paper uses 0.01;
            LibMTL defaults to 0.5).
        seed: seed of the random task orders.
        name: name of the balancer.

    Raises:
        ValueError: for `beta` outside `(0, 1]` or an invalid seed.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import GradVac
    >>> r = GradVac(seed=0).aggregate(np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]), np.ones(2))
    >>> np.round(np.asarray(r.direction, dtype=float), 4).tolist()
    [0.5848, 3.8012, 3.8012]

    References:
        Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
        Optimization in Massively Multilingual Models", ICLR 2021.
    """

    # The weights depend on the Gramian only through the normalised one.
    scale_invariant = True

    def __init__(
        self, beta: float = 0.01, seed: int | None = None, name: str | None = None, **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.beta = check_number("beta", beta, "a number in (0, 1]", lambda v: not 0 < v <= 1)
        self.seed = check_seed(seed)

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.targets = self.add_state("targets", (num_tasks, num_tasks))
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="seed_generator")

    def gramian_weights(self, gram, losses):
        num = self.num_tasks
        gram = solvers.normalize_gramian(gram)
        orders = random_orders(num, self.seed_generator)
        norms = ops.sqrt(ops.maximum(ops.diagonal(gram), 0.0))
        rows = ops.arange(num)
        beta = self.beta

        def body(k, state):
            coef, targets = state
            other = orders[:, k]
            pick = ops.one_hot(other, num)
            inner = ops.sum(ops.matmul(pick, gram) * coef, axis=1)
            norm_i = ops.sqrt(ops.maximum(ops.sum(coef * ops.matmul(coef, gram), axis=1), 0.0))
            norm_j = ops.sum(pick * norms[None, :], axis=1)
            phi = ops.clip(solvers.safe_divide(inner, norm_i * norm_j), -1.0, 1.0)
            target = ops.sum(pick * targets, axis=1)
            root_t = ops.sqrt(ops.maximum(1.0 - target * target, 0.0))
            root_p = ops.sqrt(ops.maximum(1.0 - phi * phi, 0.0))
            step = solvers.safe_divide(norm_i * (target * root_p - phi * root_t), norm_j * root_t)
            valid = (other != rows) & (norm_j > 0) & (norm_i > 0)
            active = valid & (phi < target)
            coef = coef + ops.where(active, step, 0.0)[:, None] * pick
            update = ops.where(valid, beta * (phi - target), 0.0)
            return coef, targets + update[:, None] * pick

        coef, targets = ops.fori_loop(
            0, num, body, (ops.eye(num), ops.convert_to_tensor(self.targets))
        )
        self.targets.assign(targets)
        return ops.sum(coef, axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "beta": self.beta, "seed": self.seed}
