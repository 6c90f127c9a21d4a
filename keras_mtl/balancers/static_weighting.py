"""Static (fixed) task weights."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    is_number,
    register_balancer,
    weighted_direction,
)


@register_balancer("fixed", "static", "static_weighting")
class StaticWeighting(Balancer):
    """Fixed, user-chosen task weights: the loss is `sum_t w_t L_t`.

    Args:
        weights: a sequence of `num_tasks` non-negative finite floats in task
            order, or a dict `{task_name: weight}`. A dict is resolved to task
            order by `MultiTaskModel.compile` (tasks it omits get weight 1); in
            standalone use, pass a sequence. `None` means all ones.
        name: name of the balancer.

    Raises:
        ValueError: for negative or non-finite weights, or a sequence whose
            length differs from the number of tasks.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import StaticWeighting
    >>> r = StaticWeighting([1.0, 0.5]).aggregate(np.eye(2), np.array([1.0, 1.0]))
    >>> np.asarray(r.direction).tolist()
    [1.0, 0.5]

    References:
        Caruana, "Multitask Learning", Machine Learning 28, 1997 (the weighted
        sum of task losses).
    """

    def __init__(self, weights=None, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        if weights is None:
            self.weights_config = None
        else:
            items = dict(weights) if isinstance(weights, dict) else None
            try:
                values = list(weights) if items is None else list(items.values())
            except TypeError:
                values = [None]
            if any(not is_number(v) or v < 0 for v in values):
                raise ValueError(
                    "Received an invalid value for `weights`, expected None, a sequence of "
                    "non-negative finite numbers or a dict {task_name: weight} of them. "
                    f"Received: weights={weights!r}"
                )
            self.weights_config = (
                [float(v) for v in values]
                if items is None
                else {k: float(v) for k, v in items.items()}
            )
        self._resolved = None if isinstance(self.weights_config, dict) else self.weights_config

    def set_task_names(self, task_names: list[str]) -> None:
        """Orders dict weights by `task_names` (called by `MultiTaskModel`).

        Args:
            task_names: the model's task names in task order.

        Raises:
            ValueError: if the dict names a task the model does not have.
        """
        super().set_task_names(task_names)
        if isinstance(self.weights_config, dict):
            unknown = sorted(set(self.weights_config) - set(task_names))
            if unknown:
                raise ValueError(
                    f"Received `weights` for unknown tasks {unknown}; the model's tasks "
                    f"are {list(task_names)}. Received: weights={self.weights_config!r}"
                )
            self._resolved = [float(self.weights_config.get(t, 1.0)) for t in task_names]

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        if isinstance(self.weights_config, dict) and self._resolved is None:
            raise ValueError(
                "`StaticWeighting(weights=dict)` needs task names: use it through "
                "`MultiTaskModel.compile`, or pass a list of weights in task order. "
                f"Received: weights={self.weights_config!r}"
            )
        if self._resolved is not None and len(self._resolved) != num_tasks:
            raise ValueError(
                f"Expected {num_tasks} weights, one per task. Received: "
                f"weights={self.weights_config!r}"
            )

    def compute(self, jacobian, losses, representation=None):
        if self._resolved is None:
            weights = ops.ones_like(losses)
        else:
            weights = ops.convert_to_tensor(self._resolved, dtype="float32")
        return BalanceResult(weighted_direction(weights, jacobian), weights)

    def get_config(self) -> dict:
        config = super().get_config()
        config["weights"] = self.weights_config
        return config
