"""Dynamic Task Prioritization: focal-loss-style weights from task KPIs."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_number,
    register_balancer,
    weighted_direction,
)

KPIS = ("accuracy", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy")


def _correct(name: str, y_true, y_pred):
    """Per-example correctness in [0, 1] for a KPI name, shape `(batch,)`."""
    y_pred = ops.convert_to_tensor(y_pred, dtype="float32")
    y_true = ops.convert_to_tensor(y_true)
    if len(y_pred.shape) < 2:
        y_pred = ops.expand_dims(y_pred, -1)
    classes = y_pred.shape[-1]
    if name == "accuracy":
        if classes == 1:
            name = "binary_accuracy"
        elif len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == classes:
            name = "categorical_accuracy"
        else:
            name = "sparse_categorical_accuracy"
    if name == "binary_accuracy":
        y_true = ops.cast(y_true, "float32")
        if len(y_true.shape) < 2:
            y_true = ops.expand_dims(y_true, -1)
        hit = ops.cast(ops.equal(y_pred > 0.5, y_true > 0.5), "float32")
        return ops.reshape(ops.mean(hit, axis=-1), (-1,))
    predicted = ops.argmax(y_pred, axis=-1)
    if name == "categorical_accuracy":
        actual = ops.argmax(ops.cast(y_true, "float32"), axis=-1)
    else:
        actual = ops.cast(y_true, "int32")
        if len(actual.shape) == len(predicted.shape) + 1:
            actual = ops.squeeze(actual, -1)
    hit = ops.equal(ops.cast(predicted, "int32"), ops.cast(actual, "int32"))
    return ops.reshape(ops.cast(hit, "float32"), (-1,))


@register_balancer("dtp", "dynamic_task_prioritization")
class DTP(Balancer):
    """Dynamic Task Prioritization (Guo et al.): harder tasks weigh more.

    Each task has a key performance indicator `kappa_t` in [0, 1] (higher is
    better), smoothed by an exponential moving average

    `k_t <- alpha * kappa_t + (1 - alpha) * k_t` (the first value is taken as is),

    and weighted by the focal-loss form `w_t = -(1 - k_t)^gamma log(k_t)`, so a
    task far from perfect gets a large weight and a mastered one a weight
    near 0. `k_t` is clipped to `[epsilon, 1 - epsilon]` to keep the
    logarithm finite.

    The KPI of a task is the metric named in `kpi`, measured on each training
    batch in `observe` over the labelled examples (`MultiTaskModel` calls it
    every step; standalone, call `observe(y_true, y_pred, masks)` before
    `aggregate`). Tasks without a named metric, or a step with no `observe`,
    use `exp(-L_t)` instead. A batch in which a task has no label leaves its
    average unchanged (with `exp(-L_t)`: a loss of exactly 0, what
    `MultiTaskModel` gives a task without labels, as in FAMO and GLS).

    Args:
        kpi: `None` (every task uses `exp(-L_t)`), a metric name used for every
            task, or a dict `{task_name: metric name}`. Metric names:
            `"accuracy"` (binary for one output unit, categorical or sparse
            categorical otherwise, from the label's shape),
            `"binary_accuracy"` (threshold 0.5), `"categorical_accuracy"`,
            `"sparse_categorical_accuracy"`.
        gamma: focusing parameter, a non-negative float.
        alpha: weight of the newest KPI in the moving average, in (0, 1].
        epsilon: clipping margin of `k_t`, in (0, 0.5).
        name: name of the balancer.

    Raises:
        ValueError: for an unknown metric name or an out-of-range value; from
            `set_task_names`, for a `kpi` dict naming an unknown task.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import DTP
    >>> b = DTP(gamma=1.0)
    >>> w = np.asarray(b.aggregate(None, np.array([np.log(2.0), np.log(10.0)])).weights)
    >>> print(np.round(w, 4))  # -(1 - k) log(k) with k = 1/2 and 1/10
    [0.3466 2.0723]

    References:
        Guo, Haque, Huang, Yeung and Fei-Fei, "Dynamic Task Prioritization for
        Multitask Learning", ECCV 2018.
    """

    def __init__(
        self,
        kpi: str | dict | None = None,
        gamma: float = 2.0,
        alpha: float = 0.1,
        epsilon: float = 1e-4,
        name: str | None = None,
        **kwargs,
    ):
        names = list(kpi.values()) if isinstance(kpi, dict) else [kpi]
        bad = [n for n in names if n is not None and n not in KPIS]
        if bad or not (kpi is None or isinstance(kpi, str | dict)):
            raise ValueError(
                f"Received an invalid value for `kpi`, expected None, one of {list(KPIS)} "
                f"or a dict {{task_name: metric}} of them. Received: kpi={kpi!r}"
            )
        gamma = check_number("gamma", gamma, "a non-negative float", lambda v: v < 0)
        alpha = check_number("alpha", alpha, "a float in (0, 1]", lambda v: not 0 < v <= 1)
        epsilon = check_number("epsilon", epsilon, "a float in (0, 0.5)", lambda v: not 0 < v < 0.5)
        super().__init__(name=name, **kwargs)
        self.kpi = dict(kpi) if isinstance(kpi, dict) else kpi
        self.gamma = gamma
        self.alpha = alpha
        self.epsilon = epsilon

    def set_task_names(self, task_names: list[str]) -> None:
        """Resolves a `kpi` dict to task order.

        Args:
            task_names: the model's task names in task order.

        Raises:
            ValueError: if `kpi` names a task the model does not have.
        """
        if isinstance(self.kpi, dict):
            unknown = sorted(set(self.kpi) - set(task_names))
            if unknown:
                raise ValueError(
                    f"Received `kpi` for unknown tasks {unknown}; the model's tasks are "
                    f"{list(task_names)}. Received: kpi={self.kpi!r}"
                )
        super().set_task_names(task_names)

    def _kpi_names(self, task_names) -> list:
        if isinstance(self.kpi, dict):
            return [self.kpi.get(t) for t in task_names]
        return [self.kpi] * len(task_names)

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        self.kpi_average = self.add_state("kpi_average", (num_tasks,))
        self.kpi_seen = self.add_state("kpi_seen", (num_tasks,))
        # The KPI measured by `observe` for the coming step, and whether it
        # is valid (1) or the step falls back to exp(-L) (0) / has no labels (-1).
        self.batch_kpi = self.add_state("batch_kpi", (num_tasks,))
        self.batch_kpi_status = self.add_state("batch_kpi_status", (num_tasks,))

    def observe(self, y_true: dict, y_pred: dict, masks: dict) -> None:
        """Measures the per-task KPI of the batch (tasks with a metric).

        Args:
            y_true: `{task: labels}`.
            y_pred: `{task: predictions}`.
            masks: `{task: (batch,) mask}` (1 where the label exists), or
                `None` when every label exists.
        """
        task_names = self.task_names or list(y_pred)
        if not self.built:
            self.build(len(task_names))
        if self.kpi is None:
            return
        values, status = [], []
        for task, metric in zip(task_names, self._kpi_names(task_names), strict=True):
            if metric is None:
                values.append(ops.convert_to_tensor(0.0))
                status.append(ops.convert_to_tensor(0.0))
                continue
            correct = _correct(metric, y_true[task], y_pred[task])
            mask = ops.ones_like(correct) if masks is None else masks[task]
            mask = ops.reshape(ops.cast(mask, "float32"), (-1,))
            count = ops.sum(mask)
            values.append(ops.sum(correct * mask) / ops.maximum(count, 1.0))
            status.append(ops.where(count > 0.0, 1.0, -1.0))
        self.batch_kpi.assign(ops.stack(values))
        self.batch_kpi_status.assign(ops.stack(status))

    def compute(self, jacobian, losses, representation=None):
        status = ops.convert_to_tensor(self.batch_kpi_status)
        # exp(-0) = 1 would make a task without labels look mastered.
        status = ops.where(ops.logical_and(status == 0.0, losses == 0.0), -1.0, status)
        kpi = ops.where(status > 0.0, self.batch_kpi, ops.exp(-losses))
        seen = ops.convert_to_tensor(self.kpi_seen)
        average = ops.convert_to_tensor(self.kpi_average)
        smoothed = ops.where(seen > 0.0, self.alpha * kpi + (1.0 - self.alpha) * average, kpi)
        # A task without labels in this batch keeps its average.
        average = ops.where(status < 0.0, average, smoothed)
        seen = ops.where(status < 0.0, seen, ops.ones_like(seen))
        self.kpi_average.assign(average)
        self.kpi_seen.assign(seen)
        # Consumed: the next step falls back to exp(-L) unless observed again.
        self.batch_kpi_status.assign(ops.zeros_like(status))
        k = ops.clip(average, self.epsilon, 1.0 - self.epsilon)
        weights = -ops.power(1.0 - k, self.gamma) * ops.log(k)
        # Before any labelled batch, a task has no KPI yet: weight 1.
        weights = ops.where(seen > 0.0, weights, ops.ones_like(weights))
        return BalanceResult(weighted_direction(weights, jacobian), weights)

    def logs(self) -> dict:
        if not self.built or self.task_names is None:
            return {}
        return {f"{t}_kpi": self.kpi_average[i] for i, t in enumerate(self.task_names)}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(kpi=self.kpi, gamma=self.gamma, alpha=self.alpha, epsilon=self.epsilon)
        return config
