"""Model builders for the benchmark: a trunk per input type and an architecture on top."""

from __future__ import annotations

import keras

from keras_mtl.bench.problems import Problem
from keras_mtl.layers import SharedBottom, SharedRepresentation
from keras_mtl.models.multi_task_model import MultiTaskModel

ARCHITECTURES = ("shared_bottom", "mmoe")


def _lenet(x):
    # LeNet-style trunk of the MultiMNIST experiments (Sener & Koltun, 2018).
    x = keras.layers.Conv2D(10, 5, activation="relu", name="conv_1")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(20, 5, activation="relu", name="conv_2")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    return keras.layers.Dense(50, activation="relu", name="features")(x)


def build_model(problem: Problem, arch: str, tasks=None) -> MultiTaskModel:
    """Builds an uncompiled model for `problem`.

    Args:
        problem: the benchmark problem (its trunk type and task heads).
        arch: `"shared_bottom"` (hard sharing; the shared tensor is marked with
            `SharedRepresentation`) or `"mmoe"` (8 experts, one gate per task).
        tasks: the tasks to predict (all by default; one task for STL).

    Returns:
        A `MultiTaskModel`.

    Raises:
        ValueError: for an unknown architecture.

    Example:

    A shared bottom on 3 features: `Dense(64)` (256 parameters), then per
    task a `Dense(8)` tower (520) and a `Dense(1)` head (9):

    >>> import numpy as np
    >>> from keras_mtl.bench.architectures import build_model
    >>> from keras_mtl.bench.problems import Problem, TaskSpec
    >>> spec = TaskSpec(1, None, "mse", "mse", False)
    >>> data = (np.zeros((4, 3), "float32"), {"a": np.zeros((4, 1)), "b": np.zeros((4, 1))})
    >>> problem = Problem("toy", {"a": spec, "b": spec}, data, None, data, "mlp")
    >>> build_model(problem, "shared_bottom").count_params(), 256 + 2 * (520 + 9)
    (1314, 1314)
    >>> stl = build_model(problem, "shared_bottom", tasks=["b"])
    >>> stl.count_params(), list(stl(data[0]))
    (785, ['b'])
    """
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {arch!r}; expected one of {list(ARCHITECTURES)}. "
            f"Received: arch={arch!r}"
        )
    tasks = list(tasks or problem.tasks)
    x = problem.train[0]
    inputs = keras.Input(x.shape[1:], name="inputs")
    features = _lenet(inputs) if problem.trunk == "lenet" else inputs
    if arch == "shared_bottom":
        shared = SharedRepresentation(name="shared")(
            SharedBottom(units=(64,), name="bottom")(features)
        )
        per_task = [shared] * len(tasks)
    else:
        from keras_mtl.layers import MMoE

        per_task = MMoE(num_tasks=len(tasks), num_experts=8, expert_units=(16,), name="mmoe")(
            features
        )
        if len(tasks) == 1 and not isinstance(per_task, list | tuple):
            per_task = [per_task]
    outputs = {}
    for task, h in zip(tasks, per_task, strict=True):
        spec = problem.tasks[task]
        tower = keras.layers.Dense(
            8 if problem.trunk == "mlp" else 32, activation="relu", name=f"{task}_tower"
        )(h)
        outputs[task] = keras.layers.Dense(spec.units, activation=spec.activation, name=task)(tower)
    return MultiTaskModel(inputs=inputs, outputs=outputs)
