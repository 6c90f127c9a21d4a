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
    last two completed epochs, whether the running epoch ended), so that
    saving the model and resuming with `fit(initial_epoch=...)` or
    `keras.callbacks.BackupAndRestore` continues the same trajectory.
    `MultiTaskModel.fit` calls `on_epoch_begin` before every epoch and
    `on_epoch_end` after it. When `on_epoch_begin` is called after at least
    one step, the running epoch:

    - is closed (its means become the last completed epoch's) if it ended
      (`on_epoch_end` was called; a `fit(epochs=1)` called again starts a new
      epoch 0 and so closes the previous one), if it was not begun by
      `on_epoch_begin` (steps of `train_on_batch`), or if the epoch that
      begins has a higher index (a training loop that only reports the
      beginnings of epochs);
    - is discarded (its loss sums and step counts reset) if it began but
      never ended and the epoch that begins has the same or a lower index:
      it was interrupted, and is replayed from its first step (Keras's
      `BackupAndRestore` resumes from a mid-epoch backup by restarting that
      epoch; a `fit` interrupted by `KeyboardInterrupt` is called again).

    With `steps_per_epoch` set (standalone use, or a training loop that calls
    neither hook), an epoch also ends after that many steps. Without hooks or
    `steps_per_epoch`, every step belongs to the first epoch and the weights
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
        # 0 while an epoch begun by `on_epoch_begin` has not ended; 1 once it
        # ended, or before any began.
        self.epoch_ended = self.add_state("epoch_ended", (), initializer="ones")

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
        """Closes or discards the running epoch, and records that `epoch` began.

        The running epoch is discarded if it began, never ended and `epoch`
        is not after it (it is replayed), else closed if it saw any step;
        see the class docstring.

        Args:
            epoch: the 0-based index of the epoch that begins.
        """
        if not self.built:
            return
        ended, begun = (float(ops.convert_to_numpy(v)) for v in (self.epoch_ended, self.epoch))
        if ended == 0.0 and epoch <= begun:
            # Interrupted and replayed from its first step: its steps so far
            # would count twice.
            for state in (self.epoch_loss_sums, self.epoch_loss_counts, self.epoch_steps):
                state.assign(ops.zeros_like(state))
        self._assign(self._rolled(self.epoch_steps > 0.0))
        self.epoch.assign(float(epoch))
        self.epoch_ended.assign(0.0)

    def on_epoch_end(self, epoch: int) -> None:
        """Records that the running epoch ended: the next `on_epoch_begin` closes it.

        Args:
            epoch: the 0-based index of the epoch that ended.
        """
        del epoch
        if self.built:
            self.epoch_ended.assign(1.0)

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
