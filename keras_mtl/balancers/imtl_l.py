"""IMTL-L: learned loss scales that equalise the scaled task losses."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_number,
    register_balancer,
    weighted_direction,
)


@register_balancer("imtl_l", "imtll")
class IMTLL(Balancer):
    """Loss balance of Impartial Multi-Task Learning (Liu et al.), IMTL-L.

    Every task owns a trainable scale parameter `s_t` (initialised to 0) and
    the objective is `sum_t exp(s_t) L_t - s_t`. Its gradient with respect to
    `s_t` is `exp(s_t) L_t - 1`, which vanishes when the scaled loss
    `exp(s_t) L_t` is 1 for every task. The weights are `exp(s_t)`. A task
    whose loss is exactly 0 (a batch without its labels) adds nothing to the
    objective in that step: the term `-s_t` alone would raise its scale at
    every batch without labels.

    The model trains the task networks with the weights (stopped gradient)
    and `s` with `auxiliary_loss`, both through the model's optimizer.

    Args:
        initial_scale: starting value of every `s_t`, a finite float.
        name: name of the balancer.

    Raises:
        ValueError: if `initial_scale` is not a finite number.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import IMTLL
    >>> b = IMTLL(initial_scale=np.log(3.0))
    >>> np.round(np.asarray(b.aggregate(None, np.array([1.0, 2.0])).weights), 4).tolist()
    [3.0, 3.0]

    References:
        Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards Impartial
        Multi-task Learning", ICLR 2021.
    """

    def __init__(self, initial_scale: float = 0.0, name: str | None = None, **kwargs):
        check_number("initial_scale", initial_scale, "a finite number")
        super().__init__(name=name, **kwargs)
        self.initial_scale = float(initial_scale)

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.scales = self.add_weight(
            name="scales",
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(self.initial_scale),
            trainable=True,
        )

    def compute(self, jacobian, losses, representation=None):
        weights = ops.exp(ops.convert_to_tensor(self.scales))
        return BalanceResult(weighted_direction(weights, jacobian), weights)

    def auxiliary_loss(self, losses):
        """`sum_t exp(s_t) L_t - s_t` over the tasks whose loss is not 0, which
        trains `s` (losses stopped by the engine).

        Args:
            losses: `(num_tasks,)` task losses.

        Returns:
            A scalar.
        """
        losses = ops.convert_to_tensor(losses, dtype="float32")
        if not self.built:
            self.build(int(losses.shape[0]))
        return _scale_objective(self.scales, losses)

    def get_config(self) -> dict:
        config = super().get_config()
        config["initial_scale"] = self.initial_scale
        return config


def _scale_objective(scales, losses):
    """IMTL-L's `sum_t exp(s_t) L_t - s_t` over the tasks whose loss is not 0.

    A task without labels in the batch (loss 0) adds no term: `-s_t` alone
    would raise its scale at every such batch.
    """
    s = ops.convert_to_tensor(scales)
    present = ops.cast(ops.not_equal(losses, 0.0), "float32")
    return ops.sum(present * (ops.exp(s) * losses - s))
