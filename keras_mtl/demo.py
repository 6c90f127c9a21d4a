"""`keras-mtl demo`: a shared-bottom model on the MMoE synthetic data with several balancers."""

from __future__ import annotations

import time

import keras
import numpy as np

from keras_mtl import balancers as balancer_registry
from keras_mtl._validation import check_positive_int
from keras_mtl.datasets import synthetic
from keras_mtl.layers import SharedBottom, SharedRepresentation
from keras_mtl.models.multi_task_model import MultiTaskModel

DEFAULT_BALANCERS = ("ew", "uw", "dwa", "pcgrad", "mgda", "db_mtl")


class StepTimer(keras.callbacks.Callback):
    """Keras callback recording the wall time of each training batch.

    Attributes:
        times: seconds per batch (`time.perf_counter` differences), in order.

    Example:

    With a clock that reads 1.0 s at the batch's start and 1.25 s at its end:

    >>> from unittest import mock
    >>> from keras_mtl.demo import StepTimer
    >>> timer = StepTimer()
    >>> with mock.patch("time.perf_counter", side_effect=[1.0, 1.25]):
    ...     timer.on_train_batch_begin(0)
    ...     timer.on_train_batch_end(0)
    >>> timer.times
    [0.25]
    """

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def build_model(input_dim: int, tasks, units=(64, 32), tower_units: int = 16):
    """A shared-bottom MLP with one small tower per task.

    Args:
        input_dim: number of input features.
        tasks: task names.
        units: widths of the shared layers.
        tower_units: width of each tower's hidden layer.

    Returns:
        An uncompiled `MultiTaskModel` with one output per task.

    Example:

    Shared `Dense(4)` on 3 inputs (16 parameters), per task `Dense(2)`
    (10) and `Dense(1)` (3): 42 parameters. The biases start at zero, so the
    zero input gives zero outputs:

    >>> import numpy as np
    >>> from keras_mtl.demo import build_model
    >>> model = build_model(3, ["a", "b"], units=(4,), tower_units=2)
    >>> model.count_params()
    42
    >>> {t: np.asarray(y).tolist() for t, y in model(np.zeros((1, 3), "float32")).items()}
    {'a': [[0.0]], 'b': [[0.0]]}
    """
    inputs = keras.Input((input_dim,), name="features")
    shared = SharedRepresentation(name="shared")(SharedBottom(units=units, name="trunk")(inputs))
    outputs = {
        t: keras.layers.Dense(1, name=t)(
            keras.layers.Dense(tower_units, activation="relu", name=f"{t}_tower")(shared)
        )
        for t in tasks
    }
    return MultiTaskModel(inputs=inputs, outputs=outputs)


def run_demo(
    balancers=None,
    epochs: int = 5,
    correlation: float = 0.5,
    num_train: int = 8000,
    batch_size: int = 128,
    seed: int = 0,
    print_fn=print,
) -> list[dict]:
    """Trains one model per balancer and prints a table of test metrics.

    Every balancer trains the same model from the same initial weights with
    Adam (learning rate 1e-3) on MSE losses.

    Args:
        balancers: balancer names; the default uses those of
            `DEFAULT_BALANCERS` that this installation provides.
        epochs: training epochs per balancer.
        correlation: task correlation of the synthetic data.
        num_train: number of training examples (the test set is a quarter).
        batch_size: batch size.
        seed: seed of the data and of the weights.
        print_fn: where progress and the table go.

    Returns:
        One dict per balancer: `balancer`, `<task>_mse` per task,
        `ms_per_step`, `seconds`.

    Raises:
        ValueError: for an unknown balancer name, no balancers, or `epochs`,
            `num_train` or `batch_size` that is not a positive integer.

    Example:

    The arguments are checked before any data is made or model trained
    (`keras-mtl demo` runs the full version; `format_table` shows the
    printed table):

    >>> from keras_mtl.demo import run_demo
    >>> run_demo(balancers=["ew"], epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: Received an invalid value for `epochs`, expected a positive integer. Received: epochs=0
    """
    for name, value in (("epochs", epochs), ("num_train", num_train), ("batch_size", batch_size)):
        check_positive_int(name, value)
    available = balancer_registry.available()
    if balancers is None:
        balancers = [b for b in DEFAULT_BALANCERS if b in available]
    unknown = [b for b in balancers if b not in available]
    if unknown or not balancers:
        raise ValueError(
            f"Unknown balancers {unknown}; expected names from {available}. "
            f"Received: balancers={list(balancers)}"
        )
    (x, y), (xt, yt) = synthetic.load_data(
        num_train=num_train, num_test=max(1, num_train // 4), correlation=correlation, seed=seed
    )
    tasks = list(y)
    rows = []
    print_fn(
        f"MMoE synthetic data: {num_train} train examples, correlation {correlation}, "
        f"{epochs} epochs, batch {batch_size}"
    )
    for i, name in enumerate(balancers, 1):
        keras.utils.set_random_seed(seed)
        model = build_model(x.shape[1], tasks)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss={t: "mse" for t in tasks},
            balancer=name,
        )
        timer = StepTimer()
        start = time.perf_counter()
        model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[timer])
        seconds = time.perf_counter() - start
        result = model.evaluate(xt, yt, batch_size=1024, verbose=0, return_dict=True)
        # Skip the first epoch's steps: they include tracing.
        steady = timer.times[len(timer.times) // max(1, epochs) :] or timer.times
        row = {"balancer": name, "ms_per_step": 1000 * float(np.median(steady)), "seconds": seconds}
        row.update({f"{t}_mse": float(result[f"{t}_loss"]) for t in tasks})
        rows.append(row)
        print_fn(f"[{i}/{len(balancers)}] {name}: done in {seconds:.1f} s")
    print_fn(format_table(rows, tasks))
    return rows


def format_table(rows: list[dict], tasks) -> str:
    """Formats demo rows as an aligned text table.

    Args:
        rows: dicts as returned by `run_demo` (`balancer`, `<task>_mse`,
            `ms_per_step`).
        tasks: task names, in column order.

    Returns:
        The table, one line per row after a header and a rule; the "vs ew"
        column is each row's step time over the `ew` row's ("-" without one).

    Example:

    >>> from keras_mtl.demo import format_table
    >>> rows = [
    ...     {"balancer": "ew", "a_mse": 0.5, "ms_per_step": 2.0},
    ...     {"balancer": "mgda", "a_mse": 0.25, "ms_per_step": 3.0},
    ... ]
    >>> print(format_table(rows, ["a"]))
    balancer  a test MSE  ms/step  vs ew
    --------  ----------  -------  -----
    ew        0.5000      2.00     1.00x
    mgda      0.2500      3.00     1.50x
    """
    header = ["balancer", *[f"{t} test MSE" for t in tasks], "ms/step", "vs ew"]
    base = next((r["ms_per_step"] for r in rows if r["balancer"] == "ew"), None)
    lines = []
    for r in rows:
        ratio = f"{r['ms_per_step'] / base:.2f}x" if base else "-"
        lines.append(
            [
                r["balancer"],
                *[f"{r[f'{t}_mse']:.4f}" for t in tasks],
                f"{r['ms_per_step']:.2f}",
                ratio,
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        + [fmt.format(*line) for line in lines]
    )
