import time

import keras
import numpy as np
import pytest

from keras_mtl import demo
from keras_mtl.datasets import synthetic

# The defaults that README.md and `keras-mtl demo --help` name.
DOCUMENTED_BALANCERS = ["ew", "uw", "dwa", "pcgrad", "mgda", "db_mtl"]

# Fake step durations (seconds): the first epoch's steps include tracing and
# must be left out; the median of the others is 2.5 ms (their mean is 4 ms).
FIRST_EPOCH = 1.0
LATER_STEPS = [0.001, 0.002, 0.003, 0.010]


class FakeTimer(keras.callbacks.Callback):
    """Stands in for `StepTimer` with known step durations."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(FIRST_EPOCH if self._epoch == 0 else LATER_STEPS[batch])


def test_step_timer_measures_each_batch(monkeypatch):
    # A fake clock: wall-clock bounds would fail on a loaded machine.
    clock = iter([10.0, 10.25, 11.0, 11.0, 12.5, 12.625])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    timer = demo.StepTimer()
    for _ in range(3):
        timer.on_train_batch_begin(0)
        timer.on_train_batch_end(0)
    assert timer.times == [0.25, 0.0, 0.125]


def test_run_demo_reports_the_test_mse_step_time_and_duration(monkeypatch):
    models, fit_seconds, timers, printed = [], [], [], []

    def build_model(input_dim, tasks):
        model = build(input_dim, tasks)
        fit = model.fit

        def timed_fit(*args, **kwargs):
            start = time.perf_counter()
            out = fit(*args, **kwargs)
            fit_seconds.append(time.perf_counter() - start)
            return out

        model.fit = timed_fit
        models.append(model)
        return model

    def fake_timer():
        timers.append(FakeTimer())
        return timers[-1]

    build = demo.build_model
    monkeypatch.setattr(demo, "build_model", build_model)
    monkeypatch.setattr(demo, "StepTimer", fake_timer)
    # 256 examples in batches of 64: 4 steps per epoch.
    kwargs = dict(num_train=256, epochs=2, batch_size=64, correlation=-0.3, seed=3)
    rows = demo.run_demo(balancers=["ew", "pcgrad"], print_fn=printed.append, **kwargs)

    assert [r["balancer"] for r in rows] == ["ew", "pcgrad"]
    assert [len(t.times) for t in timers] == [8, 8]
    _, (x_test, y_test) = synthetic.load_data(num_train=256, num_test=64, correlation=-0.3, seed=3)
    for row, model, seconds in zip(rows, models, fit_seconds, strict=True):
        # The test split's mean squared error, computed here from the predictions.
        predictions = model.predict(x_test, verbose=0)
        for task in ("task_1", "task_2"):
            mse = float(np.mean((predictions[task] - y_test[task]) ** 2))
            assert row[f"{task}_mse"] == pytest.approx(mse, rel=1e-5)
        assert row["ms_per_step"] == pytest.approx(1000 * np.median(LATER_STEPS))
        # `seconds` times the whole fit.
        assert seconds <= row["seconds"] < seconds + 0.5
    assert rows[0]["task_1_mse"] != rows[1]["task_1_mse"]
    assert printed[0] == (
        "MMoE synthetic data: 256 train examples, correlation -0.3, 2 epochs, batch 64"
    )
    assert printed[1] == f"[1/2] ew: done in {rows[0]['seconds']:.1f} s"
    assert printed[2] == f"[2/2] pcgrad: done in {rows[1]['seconds']:.1f} s"
    assert printed[3:] == [demo.format_table(rows, ["task_1", "task_2"])]


class _StubModel:
    """A model whose training costs nothing, to see which balancers run."""

    def __init__(self, compiled):
        self.compiled = compiled

    def compile(self, **kwargs):
        self.compiled.append(kwargs["balancer"])

    def fit(self, *args, callbacks=(), **kwargs):
        for callback in callbacks:
            callback.on_train_batch_begin(0)
            callback.on_train_batch_end(0)

    def evaluate(self, *args, **kwargs):
        return {"task_1_loss": 1.0, "task_2_loss": 2.0}


def test_default_balancers_are_the_documented_ones(monkeypatch, capsys):
    compiled = []
    monkeypatch.setattr(demo, "build_model", lambda *args: _StubModel(compiled))
    rows = demo.run_demo(num_train=8, epochs=1, print_fn=lambda text: None)
    assert compiled == [r["balancer"] for r in rows] == DOCUMENTED_BALANCERS

    from keras_mtl.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: " + ",".join(DOCUMENTED_BALANCERS) + " where available)" in help_text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs=0"),
        ({"num_train": -4}, "num_train=-4"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"balancers": []}, "Received: balancers=[]"),
        ({"balancers": ["ew", "nope"]}, "Unknown balancers ['nope']"),
    ],
)
def test_run_demo_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        demo.run_demo(**kwargs, print_fn=lambda text: None)


def test_format_table_aligns_columns_and_compares_step_times_with_ew():
    rows = [
        {"balancer": "pcgrad", "task_1_mse": 0.123456, "task_2_mse": 2.0, "ms_per_step": 6.0},
        {"balancer": "ew", "task_1_mse": 0.5, "task_2_mse": 0.25, "ms_per_step": 2.0},
    ]
    assert demo.format_table(rows, ["task_1", "task_2"]).splitlines() == [
        "balancer  task_1 test MSE  task_2 test MSE  ms/step  vs ew",
        "--------  ---------------  ---------------  -------  -----",
        "pcgrad    0.1235           2.0000           6.00     3.00x",
        "ew        0.5000           0.2500           2.00     1.00x",
    ]
    # Without an "ew" row there is nothing to compare with.
    assert demo.format_table(rows[:1], ["task_1", "task_2"]).splitlines()[2].split() == [
        "pcgrad",
        "0.1235",
        "2.0000",
        "6.00",
        "-",
    ]
