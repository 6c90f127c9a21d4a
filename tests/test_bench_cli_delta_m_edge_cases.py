"""Bench, command-line and Δm edge cases: unknown names, unwritable folders, hand-computed Δm."""

import os
import re
import runpy
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_mtl.bench import problems, runner
from keras_mtl.bench.architectures import build_model
from keras_mtl.bench.problems import Problem, TaskSpec
from keras_mtl.bench.runner import BenchConfig
from keras_mtl.bench.scores import score
from keras_mtl.metrics import delta_m, delta_m_per_task

MSE = TaskSpec(1, None, "mse", "mse", False)


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = {"a": x[:, :1], "b": x[:, 1:2]}
    return Problem("toy", {"a": MSE, "b": MSE}, (x, y), None, (x, y), "mlp")


def _config(tmp_path, **fields):
    return BenchConfig(
        **{
            "dataset": "synthetic",
            "archs": ("shared_bottom",),
            "balancers": ("ew",),
            "epochs": 1,
            "stl": False,
            "out_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"),
            **fields,
        }
    )


# ---------------------------------------------------------------- bench: names


def test_build_model_names_an_unknown_architecture():
    # Called without `BenchConfig.validate`: an unknown name must not fall
    # through to the MMoE branch.
    message = (
        "Unknown architecture 'tower'; expected one of ['shared_bottom', 'mmoe']. "
        "Received: arch='tower'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_model(_problem(), "tower")


def test_a_single_task_mmoe_model_has_one_gate_and_one_head():
    # The STL baseline of the mmoe architecture. MMoE returns a list for one
    # task too, which is why build_model's wrapping of a lone tensor
    # (architectures.py, `per_task = [per_task]`) is never reached.
    keras.utils.set_random_seed(0)
    problem = _problem()
    model = build_model(problem, "mmoe", tasks=["b"])
    assert model.get_layer("mmoe").get_config()["num_tasks"] == 1
    assert list(model.output) == ["b"] and model(problem.train[0])["b"].shape == (8, 1)
    # 3 features: 8 experts Dense(16) (8 x 64), one bias-free gate (3 x 8), tower Dense(8)
    # (16 x 8 + 8), head (9).
    assert model.count_params() == 8 * 64 + 24 + 136 + 9


def test_load_problem_names_an_unknown_dataset():
    message = (
        f"Unknown dataset 'nope'; expected one of {sorted(problems.LOADERS)}. Received: name='nope'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        problems.load_problem("nope")


def test_score_names_an_unknown_metric():
    message = (
        "Unknown metric 'rmse'; expected one of "
        "['accuracy', 'auc', 'binary_accuracy', 'mae', 'mse']. Received: metric='rmse'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        score("rmse", np.zeros(3), np.zeros(3))


# ---------------------------------------------------------------- bench: run_bench


def test_run_bench_indents_the_progress_lines_of_each_job(tmp_path, monkeypatch):
    # `train_one` reports long jobs through `progress`; run_bench prints those
    # lines indented under the job they belong to, for STL and MTL jobs alike.
    def fake_train_one(problem, arch, balancer, seed, config, tasks=None, progress=None):
        name = ",".join(tasks or problem.tasks)
        progress(f"epoch 1/1: {name} {balancer}")
        return {"metrics": dict.fromkeys(tasks or problem.tasks, 1.0), "epoch_seconds": 1.0}

    monkeypatch.setattr(runner, "train_one", fake_train_one)
    monkeypatch.setattr(runner, "load_problem", lambda *args: _problem())
    printed = []
    runner.run_bench(_config(tmp_path, stl=True), print_fn=printed.append)
    jobs = [line for line in printed[1:] if line.startswith(("    ", "["))]
    assert [re.sub(r"\(.*\)$", "", line) for line in jobs] == [
        "    epoch 1/1: a ew",
        "[1/3] STL shared_bottom a seed 0: mse=1.0000 ",
        "    epoch 1/1: b ew",
        "[2/3] STL shared_bottom b seed 0: mse=1.0000 ",
        "    epoch 1/1: a,b ew",
        "[3/3] shared_bottom ew seed 0: a=1.0000, b=1.0000 ",
    ]


@pytest.mark.parametrize("field", ["out_dir", "cache_dir"])
def test_a_folder_without_write_permission_fails_before_any_data_is_loaded(
    tmp_path, monkeypatch, field
):
    # An existing folder the user may not write to (a shared results folder,
    # say). The permission is denied through `os.access`, as tests may run as
    # root, to whom a chmod denies nothing.
    folder = tmp_path / "readonly"
    folder.mkdir()
    access = os.access
    asked = []

    def denied(path, mode, **kwargs):
        if os.fspath(path) == str(folder):
            asked.append(mode)
            return False
        return access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", denied)
    loaded = []
    monkeypatch.setattr(runner, "load_problem", lambda *args: loaded.append(args))
    message = (
        f"Received an invalid value for `{field}`, expected a writable directory "
        f"(permission denied). Received: {field}='{folder}'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        runner.run_bench(_config(tmp_path, **{field: str(folder)}), print_fn=id)
    assert asked == [os.W_OK | os.X_OK] and loaded == []
    assert os.listdir(folder) == []


# ---------------------------------------------------------------- command line


def test_python_m_keras_mtl_cli_exits_with_the_status_of_main(tmp_path, monkeypatch, capsys):
    # `python -m keras_mtl.cli ...`: the status `main` returns is the
    # process's (an invalid bench argument: 2), not 0.
    argv = ["keras_mtl.cli", "bench", "--dataset", "synthetic", "--arch", "tower"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "out")])
    with warnings.catch_warnings():
        # runpy notes that keras_mtl.cli is already imported; it runs it afresh anyway.
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(SystemExit) as info:
            runpy.run_module("keras_mtl.cli", run_name="__main__")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-mtl bench: error: Unknown architectures ['tower']")


# ---------------------------------------------------------------- Δm


def test_a_task_without_metrics_is_named():
    message = (
        "`baselines['b']` has no metrics; expected a number or a dict with at least one "
        "{metric: value} entry. Received: baselines['b']={}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        delta_m({"a": 1.0, "b": {"mae": 1.0}}, {"a": 1.0, "b": {}}, False)


@pytest.mark.parametrize("value", ["0.9", None, True, [0.9]])
def test_a_metric_value_that_is_not_a_number_is_named(value):
    message = f"`results['a']['auc']` must be a number. Received: {value!r}"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        delta_m({"a": {"auc": value}}, {"a": {"auc": 0.8}}, True)


def test_numpy_metric_values_count_by_hand():
    # a: auc 0.9 vs 0.8 (higher better) -> +12.5; ll 0.3 vs 0.4 (lower better) -> +25;
    # b: mae 3 vs 2 (lower better) -> -50. Per task: a 18.75, b -50; Δm (-31.25) / 2.
    results = {"a": {"auc": np.float32(0.9), "ll": np.float64(0.3)}, "b": {"mae": np.int64(3)}}
    stl = {"a": {"auc": 0.8, "ll": 0.4}, "b": {"mae": 2}}
    higher = {"auc": True, "ll": False, "mae": False}
    per_task = delta_m_per_task(results, stl, higher)
    assert per_task == pytest.approx({"a": 18.75, "b": -50.0}, rel=1e-6)
    assert delta_m(results, stl, higher) == pytest.approx(-15.625, rel=1e-6)
    assert delta_m(results, stl, higher, average="metrics") == pytest.approx(-12.5 / 3, rel=1e-5)


@pytest.mark.parametrize("higher_is_better", [None, 1, "True", 0.5])
def test_higher_is_better_of_another_type_is_named(higher_is_better):
    # A string is refused as a whole, not read as a sequence of characters.
    message = (
        "`higher_is_better` must be a bool, a dict keyed by task (of bools or of "
        "{metric: bool}) or by metric name, or a sequence of bools. "
        f"Received: higher_is_better={higher_is_better!r}"
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        delta_m({"a": 0.9}, {"a": 0.8}, higher_is_better)
