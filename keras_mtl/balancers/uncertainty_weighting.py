"""Uncertainty weighting: task weights from learned homoscedastic noise."""

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


@register_balancer("uw", "uncertainty", "uncertainty_weighting")
class UncertaintyWeighting(Balancer):
    """Weights each task by a learned precision `exp(-s_t)` (Kendall et al.).

    Every task owns a trainable log-variance `s_t = log(sigma_t^2)`
    (initialised to 0). The multi-task objective is

    `sum_t exp(-s_t) L_t + s_t`

    or, with `regression_form=True`, the form derived for Gaussian likelihoods
    `sum_t 0.5 exp(-s_t) L_t + 0.5 s_t`. Its gradient with respect to `s_t` is
    `-exp(-s_t) L_t + 1` (halved in the regression form), so `s_t` settles
    at `log(L_t)` and the weight at `1 / L_t` (`1 / (2 L_t)` in the
    regression form).

    The default form is the common simplification `exp(-s) L + s` (as in
    Gal's example code), not the paper's classification term
    `L / sigma^2 + log sigma = exp(-s) L + s / 2`. LibMTL uses the regression
    form for every task with `s` initialised to -0.5:
    `UncertaintyWeighting(regression_form=True, initial_log_variance=-0.5)`.

    A task whose loss is exactly 0 (a batch without its labels) adds nothing
    to the objective in that step, the regulariser included: the objective
    is the likelihood of the observed labels, and the regulariser alone
    would raise that task's weight at every batch without labels.

    The model trains the task networks with the weights `exp(-s_t)` (stopped
    gradient) and the log-variances with `auxiliary_loss`, which holds the
    `s`-dependent part of the objective with the losses stopped. Both are
    trained by the model's optimizer.

    Args:
        regression_form: if `True`, use the `1/2` factors of the Gaussian
            (regression) likelihood: weights `0.5 exp(-s_t)`, regulariser
            `0.5 s_t`. Default `False`: weights `exp(-s_t)`, regulariser `s_t`.
        initial_log_variance: starting value of every `s_t`.
        name: name of the balancer.

    Raises:
        ValueError: if `regression_form` is not a bool or
            `initial_log_variance` is not a finite number.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import UncertaintyWeighting
    >>> b = UncertaintyWeighting(initial_log_variance=np.log(2.0))
    >>> np.round(np.asarray(b.aggregate(None, np.array([1.0, 3.0])).weights), 4).tolist()
    [0.5, 0.5]

    References:
        Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to
        Weigh Losses for Scene Geometry and Semantics", CVPR 2018.
    """

    def __init__(
        self,
        regression_form: bool = False,
        initial_log_variance: float = 0.0,
        name: str | None = None,
        **kwargs,
    ):
        if not isinstance(regression_form, bool):
            raise ValueError(
                "Received an invalid value for `regression_form`, expected a bool. "
                f"Received: regression_form={regression_form!r}"
            )
        check_number("initial_log_variance", initial_log_variance, "a finite number")
        super().__init__(name=name, **kwargs)
        self.regression_form = regression_form
        self.initial_log_variance = float(initial_log_variance)

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.log_variances = self.add_weight(
            name="log_variances",
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(self.initial_log_variance),
            trainable=True,
        )

    def _factor(self) -> float:
        return 0.5 if self.regression_form else 1.0

    def compute(self, jacobian, losses, representation=None):
        weights = self._factor() * ops.exp(-ops.convert_to_tensor(self.log_variances))
        return BalanceResult(weighted_direction(weights, jacobian), weights)

    def auxiliary_loss(self, losses):
        """`sum_t c (exp(-s_t) L_t + s_t)` with `c` = 1 (or 0.5 in the
        regression form), over the tasks whose loss is not 0; differentiable
        in `s` only when the engine stops the losses' gradient.

        Args:
            losses: `(num_tasks,)` task losses.

        Returns:
            A scalar.
        """
        losses = ops.convert_to_tensor(losses, dtype="float32")
        if not self.built:
            self.build(int(losses.shape[0]))
        s = ops.convert_to_tensor(self.log_variances)
        # A task without labels in the batch (loss 0) adds no term.
        present = ops.cast(ops.not_equal(losses, 0.0), "float32")
        return self._factor() * ops.sum(present * (ops.exp(-s) * losses + s))

    def get_config(self) -> dict:
        config = super().get_config()
        config["regression_form"] = self.regression_form
        config["initial_log_variance"] = self.initial_log_variance
        return config
