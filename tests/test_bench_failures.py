"""`keras-mtl bench` on bad input: failed runs, bad folders, damaged caches, undefined scores."""

import json
import math
import os
import sys

import numpy as np
import pytest

from keras_mtl.bench import report, runner
from keras_mtl.bench.problems import Problem, TaskSpec
from keras_mtl.bench.runner import BenchConfig
from keras_mtl.bench.scores import score
from keras_mtl.cli import main

MSE = TaskSpec(1, None, "mse", "mse", False)
AUC = TaskSpec(1, "sigmoid", "binary_crossentropy", "auc", True)


def _problem(train_labels=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = {"a": x[:, :1] * 2.0, "b": x[:, 1:2] - x[:, 2:]}
    train = (x, train_labels or y)
    return Problem("toy", {"a": MSE, "b": MSE}, train, None, (x, y), "mlp")


def _config(tmp_path, **fields):
    fields = {
        "dataset": "synthetic",
        "archs": ("shared_bottom",),
        "balancers": ("ew", "uw", "mgda"),
        "epochs": 1,
        "stl": False,
        "out_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        **fields,
    }
    return BenchConfig(**fields)


def _fake_training(monkeypatch, fail=None, calls=None):
    """A `train_one` that returns seed + 1 per task, and raises `fail[balancer]`."""

    def fake_train_one(problem, arch, balancer, seed, config, tasks=None, progress=None):
        if calls is not None:
            calls.append((arch, balancer, seed, tasks))
        if fail and balancer in fail:
            raise fail[balancer]
        return {"metrics": {t: seed + 1.0 for t in tasks or problem.tasks}, "epoch_seconds": 1.0}

    monkeypatch.setattr(runner, "train_one", fake_train_one)
    monkeypatch.setattr(runner, "load_problem", lambda *args: _problem())


def _tf_divergence():
    import tensorflow as tf

    # What a graph assertion of the gradient engine raises, message included.
    return tf.errors.InvalidArgumentError(
        None,
        None,
        "Graph execution error:\n\nDetected at node Assert_2/AssertGuard/Assert defined at:\n"
        '  File "engine.py", line 696, in _assertion\n\n'
        "assertion failed: [Non-finite task loss; the step was not applied. Losses of the "
        "tasks (a, b):] [nan 1.5]\n\t [[{{node Assert_2/AssertGuard/Assert}}]]",
    )


def test_a_diverging_run_is_recorded_as_failed_and_the_others_are_kept(tmp_path, monkeypatch):
    _fake_training(monkeypatch, fail={"uw": _tf_divergence()})
    printed = []
    results = runner.run_bench(_config(tmp_path), print_fn=printed.append)
    assert "[2/3] shared_bottom uw seed 0: failed: Non-finite task loss;" in "\n".join(printed)
    assert [(r["balancer"], r["seeds"]) for r in results["rows"]] == [
        ("ew", 1),
        ("uw", 0),
        ("mgda", 1),
    ]
    failed = results["rows"][1]
    assert math.isnan(failed["a"][0]) and not failed["pareto"]
    assert failed["error"].endswith("Losses of the tasks (a, b): [nan 1.5]")
    # The finished runs reach the files, the failed one marked as such.
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r.get("error", "") != "" for r in saved["runs"]] == [False, True, False]
    assert saved["runs"][0]["metrics"] == {"a": 1.0, "b": 1.0}
    # Strict JSON: the failed run's scores are null, read back as NaN.
    assert saved["runs"][1]["metrics"]["a"] is None
    loaded = report.read_results(str(tmp_path / "out" / "results.json"))
    assert math.isnan(loaded["runs"][1]["metrics"]["a"])
    table = report.table(results)
    assert "| shared_bottom | uw | failed: Non-finite task loss |" in table
    assert (
        "| shared_bottom | mgda | 1.0000 ± 0.0000 | 1.0000 ± 0.0000 | 1.00 | 1.00x | * |" in table
    )
    csv_text = (tmp_path / "out" / "results.csv").read_text()
    assert 'shared_bottom,uw,0,nan,nan,nan,"Non-finite task loss;' in csv_text


def test_a_failed_seed_leaves_the_other_seeds_in_the_row(tmp_path, monkeypatch):
    def flaky(problem, arch, balancer, seed, config, tasks=None, progress=None):
        if seed == 1:
            raise FloatingPointError("overflow in the update")
        return {"metrics": dict.fromkeys(tasks or problem.tasks, 2.0), "epoch_seconds": 1.0}

    monkeypatch.setattr(runner, "train_one", flaky)
    monkeypatch.setattr(runner, "load_problem", lambda *args: _problem())
    results = runner.run_bench(_config(tmp_path, balancers=("ew",), seeds=3), print_fn=id)
    (row,) = results["rows"]
    assert (row["seeds"], row["failed"], row["a"]) == (2, 1, (2.0, 0.0))
    assert "Note: shared_bottom/ew: 1 seed(s) failed: FloatingPointError: overflow" in (
        report.table(results)
    )


def test_a_real_non_finite_loss_is_caught(tmp_path, monkeypatch):
    # The engine's own assertion, not a stand-in: labels of infinity make the loss infinite.
    labels = {"a": np.full((32, 1), np.inf, "float32"), "b": np.zeros((32, 1), "float32")}
    monkeypatch.setattr(runner, "load_problem", lambda *args: _problem(labels))
    results = runner.run_bench(_config(tmp_path, balancers=("ew",)), print_fn=id)
    assert results["runs"][0]["error"].startswith("Non-finite task loss")


def test_an_interruption_keeps_the_runs_already_finished(tmp_path, monkeypatch):
    _fake_training(monkeypatch, fail={"mgda": KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        runner.run_bench(_config(tmp_path), print_fn=id)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["balancer"] for r in saved["runs"]] == ["ew", "uw"]
    assert [r["balancer"] for r in saved["rows"]] == ["ew", "uw"]
    assert not [name for name in os.listdir(tmp_path / "out") if ".tmp" in name]


def test_other_errors_still_stop_the_bench(tmp_path, monkeypatch):
    _fake_training(monkeypatch, fail={"uw": RuntimeError("a bug")})
    with pytest.raises(RuntimeError, match="a bug"):
        runner.run_bench(_config(tmp_path), print_fn=id)


@pytest.mark.parametrize("field", ["out_dir", "cache_dir"])
def test_a_file_as_out_or_cache_dir_fails_before_any_data_is_loaded(tmp_path, monkeypatch, field):
    loaded = []
    monkeypatch.setattr(runner, "load_problem", lambda *args: loaded.append(args))
    plain = tmp_path / "afile"
    plain.write_text("keep me")
    message = (
        f"Received an invalid value for `{field}`, expected a writable directory, not a file. "
        f"Received: {field}='{plain}'"
    )
    with pytest.raises(ValueError, match=f"^{message.replace('(', '.').replace(')', '.')}$"):
        runner.run_bench(_config(tmp_path, **{field: str(plain)}), print_fn=id)
    assert loaded == [] and plain.read_text() == "keep me"


def test_a_leading_tilde_in_the_folders_is_the_home_folder(tmp_path, monkeypatch):
    _fake_training(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    runner.run_bench(_config(tmp_path, out_dir="~/out", cache_dir="~/cache"), print_fn=id)
    assert (tmp_path / "out" / "results.json").is_file() and (tmp_path / "cache").is_dir()
    assert not os.path.exists("~")


def test_bench_cli_names_a_bad_out_folder(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    argv = ["bench", "--dataset", "synthetic", "--no-stl", "--out", str(tmp_path / "afile")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-mtl bench: error: Received an invalid value for `out_dir`")
    # Below a file no folder can be made: an OSError, reported the same way.
    argv[-1] = str(tmp_path / "afile" / "out")
    assert main(argv) == 2
    assert "`out_dir`, expected a writable directory (Not a directory)" in capsys.readouterr().err


def test_the_table_is_printed_before_the_files_are_written(tmp_path, monkeypatch):
    _fake_training(monkeypatch)
    write = report.write

    def full_disk(results, out_dir, plot=True):
        if plot:
            raise OSError(28, "No space left on device")
        return write(results, out_dir, plot)

    monkeypatch.setattr(report, "write", full_disk)
    printed = []
    with pytest.raises(OSError, match="No space left"):
        runner.run_bench(_config(tmp_path), print_fn=printed.append)
    assert printed[-1].startswith("| arch | balancer |")


def test_without_matplotlib_the_plot_is_skipped_with_a_warning(tmp_path, monkeypatch):
    _fake_training(monkeypatch)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    printed = []
    with pytest.warns(UserWarning, match="pareto.png not written: the plot needs matplotlib"):
        runner.run_bench(_config(tmp_path), print_fn=printed.append)
    assert sorted(os.listdir(tmp_path / "out")) == ["results.csv", "results.json"]
    assert printed[-1] == (
        f"Wrote {tmp_path / 'out' / 'results.json'}, {tmp_path / 'out' / 'results.csv'}"
    )


@pytest.mark.parametrize(
    "content, why", [("", "unreadable"), ('{"a": 1', "unreadable"), ('"x"', "expected a number")]
)
def test_a_damaged_stl_cache_file_is_reported_and_retrained(tmp_path, monkeypatch, content, why):
    calls = []
    _fake_training(monkeypatch, calls=calls)
    config = _config(tmp_path, balancers=("ew",), stl=True)
    runner.run_bench(config, print_fn=id)
    assert len([c for c in calls if c[3]]) == 2
    cached = sorted((tmp_path / "cache").iterdir())
    cached[0].write_text(content)
    calls.clear()
    printed = []
    results = runner.run_bench(config, print_fn=printed.append)
    warning = next(line for line in printed if line.startswith("Warning"))
    assert str(cached[0]) in warning and why in warning and "retraining" in warning
    # Only the damaged baseline is retrained, and its file repaired.
    assert [c[3] for c in calls if c[3]] == [["a"]] or [c[3] for c in calls if c[3]] == [["b"]]
    assert json.loads(cached[0].read_text()) == 1.0
    assert results["rows"][0]["delta_m"] == (0.0, 0.0)


def test_the_stl_cache_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    _fake_training(monkeypatch)

    def interrupted(source, target):
        # Interrupted once the temporary file is written, before it replaces the target.
        assert open(source).read() == "1.0"
        raise KeyboardInterrupt

    monkeypatch.setattr(report.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_bench(_config(tmp_path, balancers=("ew",), stl=True), print_fn=id)
    # No half-written file for the next bench to read.
    assert os.listdir(tmp_path / "cache") == []


def test_a_failed_stl_baseline_is_not_cached_and_leaves_delta_m_undefined(tmp_path, monkeypatch):
    calls = []

    def stl_diverges(problem, arch, balancer, seed, config, tasks=None, progress=None):
        calls.append(tasks)
        if tasks == ["a"]:
            raise _tf_divergence()
        return {"metrics": dict.fromkeys(tasks or problem.tasks, 1.0), "epoch_seconds": 1.0}

    monkeypatch.setattr(runner, "train_one", stl_diverges)
    monkeypatch.setattr(runner, "load_problem", lambda *args: _problem())
    printed = []
    config = _config(tmp_path, balancers=("ew",), stl=True)
    results = runner.run_bench(config, print_fn=printed.append)
    assert "STL shared_bottom a seed 0: mse=nan (failed: Non-finite task loss" in printed[1]
    assert len(os.listdir(tmp_path / "cache")) == 1
    assert all(math.isnan(v) for v in results["rows"][0]["delta_m"])
    assert "Δm not computed" in results["rows"][0]["note"]


def test_auc_of_a_single_class_or_of_no_labels_is_nan():
    predictions = np.array([[0.1], [0.2], [0.9], [0.4], [0.3]])
    assert math.isnan(score("auc", np.zeros((5, 1)), predictions))
    assert math.isnan(score("auc", np.ones((5, 1)), predictions))
    # NaN labels are dropped first: one class is left.
    assert math.isnan(score("auc", np.array([[1.0], [np.nan], [1.0], [1.0], [1.0]]), predictions))
    assert math.isnan(score("mse", np.full((3, 1), np.nan), np.zeros((3, 1))))
    assert score("auc", np.array([[0], [1], [1], [0], [0]]), predictions) == pytest.approx(2 / 3)


def test_a_row_whose_delta_m_is_undefined_gets_a_note_not_an_error():
    problem = Problem("toy", {"a": AUC, "b": MSE}, None, None, None, "mlp")
    runs = [
        {"arch": "mmoe", "balancer": "ew", "seed": 0, "metrics": {"a": 0.9, "b": 0.4}},
        {"arch": "mmoe", "balancer": "uw", "seed": 0, "metrics": {"a": math.nan, "b": 0.5}},
    ]
    for run in runs:
        run["epoch_seconds"] = 1.0
    stl = {("mmoe", "a", 0): 0.9, ("mmoe", "b", 0): 0.5}
    results = report.summarize(problem, BenchConfig(balancers=("ew", "uw")), runs, stl)
    ew, uw = results["rows"]
    assert ew["delta_m"] == pytest.approx((10.0, 0.0)) and "note" not in ew
    assert all(math.isnan(v) for v in uw["delta_m"])
    assert uw["note"].startswith("Δm not computed: ")
    table = report.table(results)
    assert "| mmoe | uw | nan ± 0.0000 | 0.5000 ± 0.0000 | n/a | 1.00 | 1.00x |  |" in table
    assert "Note: mmoe/uw: Δm not computed:" in table
    # A zero baseline (the AUC that was 0.0 for one class) is a note as well.
    stl[("mmoe", "a", 0)] = 0.0
    results = report.summarize(problem, BenchConfig(balancers=("ew", "uw")), runs[:1], stl)
    assert "baseline" in results["rows"][0]["note"]


@pytest.mark.parametrize(
    "field, names, message",
    [
        ("balancers", ("ew", "uw", "ew"), r"`balancers`, expected each name once \(\['ew'\] "),
        ("archs", ("mmoe", "mmoe"), r"Received: archs=\['mmoe', 'mmoe'\]"),
    ],
)
def test_names_given_twice_are_rejected(field, names, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(dataset="synthetic", **{field: names}).validate()
