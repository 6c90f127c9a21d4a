"""Benchmark problems: a dataset with its tasks, losses, metrics and trunk."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """How one task is predicted, trained and scored.

    Attributes:
        units: output units of the task head.
        activation: output activation.
        loss: Keras loss name.
        metric: name of the reported metric (`"auc"`, `"accuracy"`, `"mse"`, `"mae"`).
        higher_is_better: whether a larger metric is better.

    Example:

    >>> from keras_mtl.bench.problems import TaskSpec
    >>> from keras_mtl.bench.scores import score
    >>> spec = TaskSpec(units=1, activation=None, loss="mse", metric="mae", higher_is_better=False)
    >>> score(spec.metric, [1.0, 2.0], [1.5, 1.0])  # (0.5 + 1.0) / 2
    0.75
    """

    units: int
    activation: str | None
    loss: str
    metric: str
    higher_is_better: bool


@dataclasses.dataclass
class Problem:
    """A loaded benchmark problem.

    Attributes:
        name: dataset name.
        tasks: `{task: TaskSpec}` in task order.
        train, val, test: `(x, {task: y})`; `val` may be `None`.
        trunk: `"mlp"` or `"lenet"`: the shared feature extractor used by
            every architecture.

    Example:

    A problem built from arrays (`load_problem` builds them from datasets):

    >>> import numpy as np
    >>> from keras_mtl.bench.problems import Problem, TaskSpec
    >>> spec = TaskSpec(1, "sigmoid", "binary_crossentropy", "auc", True)
    >>> x, y = np.zeros((6, 2), "float32"), {"click": np.array([0, 1, 0, 1, 1, 0])}
    >>> problem = Problem("toy", {"click": spec}, (x[:4], {"click": y["click"][:4]}), None,
    ...                   (x[4:], {"click": y["click"][4:]}), "mlp")
    >>> len(problem.train[0]), problem.test[1]["click"].tolist(), problem.tasks["click"].metric
    (4, [1, 0], 'auc')
    """

    name: str
    tasks: dict[str, TaskSpec]
    train: tuple
    val: tuple | None
    test: tuple
    trunk: str


def _subsample(split, limit: int | None, seed: int):
    if split is None or limit is None or len(split[0]) <= limit:
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split[0]))[:limit])
    return split[0][idx], {t: y[idx] for t, y in split[1].items()}


def _census(data_dir, group: int):
    from keras_mtl.datasets import census_income

    train, val, test = census_income.load_data(data_dir, group=group)
    spec = TaskSpec(1, "sigmoid", "binary_crossentropy", "auc", True)
    return {t: spec for t in train[1]}, train, val, test, "mlp"


def _images(variant: str):
    def load(data_dir):
        from keras_mtl.datasets import multi_mnist

        train, test = multi_mnist.load_data(data_dir, variant=variant)
        spec = TaskSpec(10, "softmax", "sparse_categorical_crossentropy", "accuracy", True)
        return {t: spec for t in train[1]}, train, None, test, "lenet"

    return load


def _synthetic(data_dir, correlation: float = 0.5):
    from keras_mtl.datasets import synthetic

    train, test = synthetic.load_data(num_train=8000, num_test=2000, correlation=correlation)
    spec = TaskSpec(1, None, "mse", "mse", False)
    return {t: spec for t in train[1]}, train, None, test, "mlp"


def _qm9(data_dir):
    from keras_mtl.datasets import qm9

    # The MLP form: molecular descriptors; standardised targets, MSE loss and
    # MAE metric as LibMTL's QM9 setting (Δm is unit-free).
    train, val, test = qm9.load_data(data_dir, features="descriptors")
    spec = TaskSpec(1, None, "mse", "mae", False)
    return {t: spec for t in train[1]}, train, val, test, "mlp"


LOADERS: dict[str, Callable] = {
    "census_income": lambda data_dir: _census(data_dir, 1),
    "census_income_group2": lambda data_dir: _census(data_dir, 2),
    "multi_mnist": _images("mnist"),
    "multi_fashion": _images("fashion"),
    "multi_fashion_mnist": _images("fashion_mnist"),
    "synthetic": _synthetic,
    "qm9": _qm9,
}


def load_problem(
    name: str,
    data_dir=None,
    max_train: int | None = None,
    max_eval: int | None = None,
    seed: int = 0,
) -> Problem:
    """Loads a benchmark problem by name.

    Args:
        name: one of `LOADERS`.
        data_dir: data folder passed to the loader.
        max_train: keep at most this many training examples (random subset).
        max_eval: keep at most this many validation and test examples.
        seed: seed of the subsets.

    Returns:
        A `Problem`.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).

    Example:

    The synthetic problem is generated, not read from files:

    >>> from keras_mtl.bench.problems import load_problem
    >>> problem = load_problem("synthetic", max_train=16, max_eval=8)
    >>> len(problem.train[0]), problem.val, len(problem.test[0]), problem.trunk
    (16, None, 8, 'mlp')
    >>> [(t, s.metric, s.higher_is_better) for t, s in problem.tasks.items()]
    [('task_1', 'mse', False), ('task_2', 'mse', False)]
    """
    if name not in LOADERS:
        raise ValueError(
            f"Unknown dataset {name!r}; expected one of {sorted(LOADERS)}. Received: name={name!r}"
        )
    tasks, train, val, test, trunk = LOADERS[name](data_dir)
    return Problem(
        name=name,
        tasks=tasks,
        train=_subsample(train, max_train, seed),
        val=_subsample(val, max_eval, seed + 1),
        test=_subsample(test, max_eval, seed + 2),
        trunk=trunk,
    )
