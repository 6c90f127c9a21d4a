"""FAMO: fast adaptive multitask optimisation with O(1) cost per step."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_number,
    is_number,
    register_balancer,
    weighted_direction,
)


@register_balancer("famo")
class FAMO(Balancer):
    """Fast Adaptive Multitask Optimization (Liu et al.), loss-only.

    FAMO decreases every task's log-loss at an equal rate without computing
    per-task gradients. With task logits `xi` (initialised to 0),
    `z = softmax(xi)` and shifted losses `D_t = L_t - m_t + epsilon`
    (`m_t` a known lower bound of the loss, 0 by default), the model follows
    the gradient of `sum_t z_t log D_t / c` with `c = sum_t z_t / D_t`, so the
    effective weights are `w_t = z_t / (c D_t)` (they sum to 1).

    The logits learn from how the log-losses changed between two
    consecutive steps, `delta_t = log D_t(prev) - log D_t(now)`: their
    gradient is `J_softmax(xi)^T delta = z * (delta - z . delta)`, applied
    with Adam (learning rate 0.025, betas 0.9 / 0.999, epsilon 1e-8) and L2
    weight decay 1e-3 added to the gradient, as the authors' code does with
    `torch.optim.Adam`. (Their `backward` also clips the norm of the shared
    parameters' gradient to `max_norm=1`; that clip is the optimizer's job
    here, e.g. `keras.optimizers.Adam(clipnorm=1.0)`.) The authors' code measures the new losses by a second
    forward pass on the same batch after the model update; this balancer
    keeps the O(1) cost of one forward and one backward pass by comparing
    the losses of consecutive steps instead: at step `k` the logits are first
    updated from `(L(k-1), L(k))`, then give the weights of step `k`. A
    task whose loss is not above its bound `m_t` at either step (in practice
    0: no labels in the batch) gets `delta_t = 0` for that update, and in
    the step where it is not above its bound it gets weight 0 and is left
    out of `c`, so that the weights of the other tasks still sum to 1 (with
    `D_t = 0 + epsilon` it would otherwise take almost all the weight and
    scale the other tasks' gradients by about `epsilon`). If no task is
    above its bound, all weights are 0. All state (logits, previous losses,
    Adam moments and step) lives in variables.

    Args:
        learning_rate: Adam learning rate of the logits (0.025).
        weight_decay: L2 weight decay of the logits (1e-3, the authors' QM9
            runs and LibMTL's default; the `FAMO` class of the authors'
            `famo.py` defaults to 0.01, as their CelebA runs use, and the
            one in their `methods/weight_methods.py` to 1e-5).
        min_losses: `None` (zeros) or a list with one lower bound per task.
        epsilon: offset of the shifted losses, a positive float (1e-8).
        name: name of the balancer.

    Raises:
        ValueError: for a non-positive `learning_rate` or `epsilon`, a
            negative `weight_decay`, non-finite `min_losses`, or
            `min_losses` of the wrong length (at build time).

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import FAMO
    >>> w = np.asarray(FAMO().aggregate(None, np.array([1.0, 3.0])).weights)
    >>> np.round(w, 4).tolist()  # z = [1/2, 1/2]: w proportional to 1 / L
    [0.75, 0.25]

    References:
        Liu, Liang, Chen, Stone and Liu, "FAMO: Fast Adaptive Multitask
        Optimization", NeurIPS 2023.
    """

    def __init__(
        self,
        learning_rate: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses=None,
        epsilon: float = 1e-8,
        name: str | None = None,
        **kwargs,
    ):
        learning_rate = check_number(
            "learning_rate", learning_rate, "a positive float", lambda v: v <= 0
        )
        weight_decay = check_number(
            "weight_decay", weight_decay, "a non-negative float", lambda v: v < 0
        )
        epsilon = check_number("epsilon", epsilon, "a positive float", lambda v: v <= 0)
        if min_losses is not None:
            try:
                values = list(min_losses)
            except TypeError:
                values = [None]
            if any(not is_number(v) for v in values):
                raise ValueError(
                    "Received an invalid value for `min_losses`, expected None or a list of "
                    f"finite numbers. Received: min_losses={min_losses!r}"
                )
            min_losses = [float(v) for v in values]
        super().__init__(name=name, **kwargs)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.min_losses = min_losses
        self.epsilon = epsilon
        self.beta_1, self.beta_2, self.adam_epsilon = 0.9, 0.999, 1e-8

    def build(self, num_tasks: int) -> None:
        if self.min_losses is not None and len(self.min_losses) != num_tasks:
            raise ValueError(
                f"Expected {num_tasks} `min_losses`, one per task. Received: "
                f"min_losses={self.min_losses!r}"
            )
        super().build(num_tasks)
        self.logits = self.add_state("logits", (num_tasks,))
        self.previous_losses = self.add_state("previous_losses", (num_tasks,))
        self.steps = self.add_state("steps", ())
        self.adam_steps = self.add_state("adam_steps", ())
        self.adam_m = self.add_state("adam_m", (num_tasks,))
        self.adam_v = self.add_state("adam_v", (num_tasks,))

    def _shift(self, losses):
        # A loss below its given lower bound is treated as at the bound.
        if self.min_losses is None:
            return ops.maximum(losses, 0.0) + self.epsilon
        bound = ops.convert_to_tensor(self.min_losses, "float32")
        return ops.maximum(losses - bound, 0.0) + self.epsilon

    def compute(self, jacobian, losses, representation=None):
        xi = ops.convert_to_tensor(self.logits)
        previous = ops.convert_to_tensor(self.previous_losses)
        floor = 0.0 if self.min_losses is None else ops.convert_to_tensor(self.min_losses)
        usable = ops.logical_and(losses > floor, previous > floor)
        delta = ops.where(
            usable, ops.log(self._shift(previous)) - ops.log(self._shift(losses)), 0.0
        )
        z = ops.softmax(xi)
        gradient = z * (delta - ops.sum(z * delta)) + self.weight_decay * xi
        t = self.adam_steps + 1.0
        m = self.beta_1 * self.adam_m + (1.0 - self.beta_1) * gradient
        v = self.beta_2 * self.adam_v + (1.0 - self.beta_2) * gradient * gradient
        m_hat = m / (1.0 - ops.power(self.beta_1, t))
        v_hat = v / (1.0 - ops.power(self.beta_2, t))
        stepped = xi - self.learning_rate * m_hat / (ops.sqrt(v_hat) + self.adam_epsilon)
        # The first step has no previous losses: no logit update.
        update = self.steps > 0.0
        xi = ops.where(update, stepped, xi)
        self.logits.assign(xi)
        self.adam_m.assign(ops.where(update, m, self.adam_m))
        self.adam_v.assign(ops.where(update, v, self.adam_v))
        self.adam_steps.assign(ops.where(update, t, self.adam_steps))
        self.previous_losses.assign(losses)
        self.steps.assign_add(1.0)

        z = ops.softmax(xi)
        # Tasks at (or below) their bound, e.g. without labels, take no weight.
        present = ops.cast(losses > floor, "float32")
        ratio = present * z / self._shift(losses)
        weights = solvers.safe_divide(ratio, ops.sum(ratio))
        return BalanceResult(weighted_direction(weights, jacobian), weights)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            min_losses=self.min_losses,
            epsilon=self.epsilon,
        )
        return config
