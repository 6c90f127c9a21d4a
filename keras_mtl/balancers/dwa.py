"""Dynamic Weight Average: weights from the rate of change of epoch losses."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_number,
    check_positive_int,
    register_balancer,
    weighted_direction,
)


@register_balancer("dwa", "dynamic_weight_average")
class DWA(Balancer):
    """Dynamic Weight Average (Liu et al.): `w = T softmax(r / temperature)`.

    `r_t = Lbar_t(e - 1) / Lbar_t(e - 2)` is the ratio of task `t`'s mean
    training loss over the last two completed epochs, so a task whose loss
    falls slowly gets more weight. The weights are all 1 during the first two
    epochs, and sum to the number of tasks `T`.

    A task's epoch mean counts the steps where it had labels (a loss of
    exactly 0, what `MultiTaskModel` gives a task without labels, is left
    out); after an epoch without any, the task keeps its previous mean, so
    its ratio is 1 rather than 0 or unbounded.

    The balancer keeps its own epoch bookkeeping in state variables (the sums
    of the losses seen in the running epoch, the step count, the means of the
    last two completed epochs), so that saving the model and resuming with
    `fit(initial_epoch=...)` continues the same trajectory. An epoch ends:

    - when `on_epoch_begin` is called after at least one step
      (`MultiTaskModel.fit` calls it before every epoch), or
    - after `steps_per_epoch` steps, if that option is set (for standalone
      use, or a training loop that does not call `on_epoch_begin`).

    Without either, every step belongs to the first epoch and the weights
    stay equal.

    Args:
        temperature: softmax temperature, a positive float (2 in the paper).
        steps_per_epoch: `None`, or a positive integer: the number of
            `aggregate` calls that make an epoch.
        name: name of the balancer.

    Raises:
        ValueError: for a non-positive `temperature` or `steps_per_epoch`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import DWA
    >>> b = DWA(steps_per_epoch=1)
    >>> for losses in ([1.0, 1.0], [0.5, 1.0]):
    ...     _ = b.aggregate(None, np.array(losses))
    >>> w = np.asarray(b.aggregate(None, np.array([0.5, 1.0])).weights)
    >>> print(np.round(w, 4))  # 2 softmax([0.5 / 1.0, 1.0 / 1.0] / 2)
    [0.8756 1.1244]

    References:
        Liu, Johns and Davison, "End-to-End Multi-Task Learning with
        Attention", CVPR 2019.
    """

    def __init__(
        self,
        temperature: float = 2.0,
        steps_per_epoch: int | None = None,
        name: str | None = None,
        **kwargs,
    ):
        temperature = check_number("temperature", temperature, "a positive float", lambda v: v <= 0)
        steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch, allow_none=True)
        super().__init__(name=name, **kwargs)
        self.temperature = temperature
        self.steps_per_epoch = steps_per_epoch

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.epoch = self.add_state("epoch", ())
        self.completed_epochs = self.add_state("completed_epochs", ())
        self.epoch_steps = self.add_state("epoch_steps", ())
        self.epoch_loss_sums = self.add_state("epoch_loss_sums", (num_tasks,))
        self.last_mean_losses = self.add_state("last_mean_losses", (num_tasks,))
        self.previous_mean_losses = self.add_state("previous_mean_losses", (num_tasks,))
        # Steps of the running epoch in which each task had labels.
        self.epoch_loss_counts = self.add_state("epoch_loss_counts", (num_tasks,))

    def _rolled(self, roll):
        """State after closing the running epoch where `roll` is true."""
        steps = ops.convert_to_tensor(self.epoch_steps)
        sums = ops.convert_to_tensor(self.epoch_loss_sums)
        counts = ops.convert_to_tensor(self.epoch_loss_counts)
        last = ops.convert_to_tensor(self.last_mean_losses)
        mean = ops.where(counts > 0.0, sums / ops.maximum(counts, 1.0), last)
        return {
            "previous_mean_losses": ops.where(roll, last, self.previous_mean_losses),
            "last_mean_losses": ops.where(roll, mean, last),
            "epoch_loss_sums": ops.where(roll, ops.zeros_like(sums), sums),
            "epoch_loss_counts": ops.where(roll, ops.zeros_like(counts), counts),
            "epoch_steps": ops.where(roll, 0.0, steps),
            "completed_epochs": ops.where(
                roll, self.completed_epochs + 1.0, ops.convert_to_tensor(self.completed_epochs)
            ),
        }

    def _assign(self, values: dict) -> None:
        for key, value in values.items():
            getattr(self, key).assign(value)

    def on_epoch_begin(self, epoch: int) -> None:
        """Closes the running epoch if it saw any step, and records `epoch`.

        Args:
            epoch: the 0-based index of the epoch that begins.
        """
        if not self.built:
            return
        self._assign(self._rolled(self.epoch_steps > 0.0))
        self.epoch.assign(float(epoch))

    def compute(self, jacobian, losses, representation=None):
        if self.steps_per_epoch is not None:
            self._assign(self._rolled(self.epoch_steps >= float(self.steps_per_epoch)))
        last = ops.convert_to_tensor(self.last_mean_losses)
        previous = ops.convert_to_tensor(self.previous_mean_losses)
        # A task never labelled has no mean yet: ratio 1.
        ratios = ops.where(previous > 0.0, last / ops.where(previous > 0.0, previous, 1.0), 1.0)
        num_tasks = float(self.num_tasks)
        dynamic = num_tasks * ops.softmax(ratios / self.temperature)
        weights = ops.where(self.completed_epochs >= 2.0, dynamic, ops.ones_like(losses))
        self.epoch_loss_sums.assign_add(losses)
        self.epoch_loss_counts.assign_add(ops.cast(losses != 0.0, "float32"))
        self.epoch_steps.assign_add(1.0)
        return BalanceResult(weighted_direction(weights, jacobian), weights)

    def get_config(self) -> dict:
        config = super().get_config()
        config["temperature"] = self.temperature
        config["steps_per_epoch"] = self.steps_per_epoch
        return config
