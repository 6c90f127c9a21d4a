"""Random Loss Weighting: random task weights drawn at every step."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_number,
    check_seed,
    register_balancer,
    weighted_direction,
)

DISTRIBUTIONS = ("normal", "uniform", "dirichlet")


@register_balancer("rlw", "random_loss_weighting")
class RLW(Balancer):
    """Random Loss Weighting (Lin et al.): fresh random weights each step.

    By default the weights are `softmax(z)` with `z ~ N(0, I)`, the paper's
    main variant; they sum to 1. Other sampling distributions:

    - `"uniform"`: `softmax(u)` with `u ~ U(0, 1)^T`;
    - `"dirichlet"`: `w ~ Dirichlet(concentration)`, drawn as normalised
      Gamma(concentration) variables. The authors' earlier multi-distribution
      code (LibMTL) passed the Dirichlet draw through a softmax as well,
      which keeps every weight within a factor `e` of the others; here the
      draw itself is the weight vector.

    The draws come from a `keras.random.SeedGenerator` whose state is a
    variable of the balancer: a seeded balancer gives the same sequence of
    weights in every run, inside or outside `tf.function`, and continues it
    after saving and loading. Under XLA the random algorithm differs, so the
    sequence differs from the one without XLA (each is reproducible); the
    Dirichlet sampler cannot run under XLA (`supports_jit` is then `False`).

    Args:
        distribution: one of `"normal"`, `"uniform"`, `"dirichlet"`.
        concentration: Dirichlet concentration, a positive float (only for
            `"dirichlet"`).
        seed: `None` or an integer seed.
        name: name of the balancer.

    Raises:
        ValueError: for an unknown distribution, a non-positive
            concentration or a non-integer seed.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import RLW
    >>> w = np.asarray(RLW(seed=0).aggregate(None, np.array([1.0, 2.0, 3.0])).weights)
    >>> bool(abs(w.sum() - 1.0) < 1e-6 and (w > 0).all())
    True

    References:
        Lin, Ye, Xu, Shi and Zhang, "Reasonable Effectiveness of Random
        Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022.
    """

    def __init__(
        self,
        distribution: str = "normal",
        concentration: float = 1.0,
        seed: int | None = None,
        name: str | None = None,
        **kwargs,
    ):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                "Received an invalid value for `distribution`, expected one of "
                f"{list(DISTRIBUTIONS)}. Received: distribution={distribution!r}"
            )
        concentration = check_number(
            "concentration", concentration, "a positive float", lambda v: v <= 0
        )
        seed = check_seed(seed)
        super().__init__(name=name, **kwargs)
        self.distribution = distribution
        self.concentration = concentration
        self.seed = seed
        # XLA has no kernel for the stateless Gamma sampler.
        self.supports_jit = distribution != "dirichlet"

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="seed_generator")

    def compute(self, jacobian, losses, representation=None):
        shape = (self.num_tasks,)
        if self.distribution == "normal":
            weights = ops.softmax(keras.random.normal(shape, seed=self.seed_generator))
        elif self.distribution == "uniform":
            weights = ops.softmax(keras.random.uniform(shape, seed=self.seed_generator))
        else:
            draws = keras.random.gamma(shape, alpha=self.concentration, seed=self.seed_generator)
            weights = draws / ops.maximum(ops.sum(draws), 1e-30)
        weights = ops.cast(weights, "float32")
        return BalanceResult(weighted_direction(weights, jacobian), weights)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            distribution=self.distribution, concentration=self.concentration, seed=self.seed
        )
        return config
