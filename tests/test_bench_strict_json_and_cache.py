"""`keras-mtl bench` files: strict JSON with null for NaN, an STL cache keyed by the data."""

import json
import math
import pathlib

import numpy as np
import pytest

from keras_mtl.bench import report, runner
from keras_mtl.bench.problems import Problem, TaskSpec
from keras_mtl.bench.runner import BenchConfig

MSE = TaskSpec(1, None, "mse", "mse", False)


def _strict_loads(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _problem(scale=1.0):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = {"a": x[:, :1] * scale, "b": x[:, 1:2] - x[:, 2:]}
    return Problem("toy", {"a": MSE, "b": MSE}, (x, y), None, (x, y), "mlp")


def _config(tmp_path, **fields):
    fields = {
        "dataset": "synthetic",
        "archs": ("shared_bottom",),
        "balancers": ("ew", "uw"),
        "epochs": 1,
        "stl": True,
        "out_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        **fields,
    }
    return BenchConfig(**fields)


def _fake(monkeypatch, problems, calls, nan_task=None, fail=()):
    """`train_one` returning 1.0 per task (NaN for `nan_task`), raising for `fail` balancers;
    `load_problem` returning the next of `problems`."""

    def train_one(problem, arch, balancer, seed, config, tasks=None, progress=None):
        calls.append((balancer, tasks))
        if balancer in fail and tasks is None:
            raise FloatingPointError("diverged")
        metrics = {t: math.nan if t == nan_task else 1.0 for t in tasks or problem.tasks}
        return {"metrics": metrics, "epoch_seconds": 1.0}

    monkeypatch.setattr(runner, "train_one", train_one)
    monkeypatch.setattr(runner, "load_problem", lambda *args: problems.pop(0))


def test_results_json_is_strict_json_with_null_for_nan(tmp_path, monkeypatch):
    calls = []
    _fake(monkeypatch, [_problem()], calls, nan_task="b", fail=("uw",))
    results = runner.run_bench(_config(tmp_path), print_fn=id)
    text = (tmp_path / "out" / "results.json").read_text()
    saved = _strict_loads(text)  # raises on NaN or Infinity
    failed = saved["runs"][1]
    assert failed["error"] == "FloatingPointError: diverged"
    assert failed["metrics"] == {"a": None, "b": None} and failed["epoch_seconds"] is None
    uw = saved["rows"][1]
    assert uw["a"] == [None, None] and uw["delta_m"] == [None, None] and uw["seeds"] == 0
    assert saved["stl"]["shared_bottom/b"] == [None, 0.0]
    # Read back, null is NaN again and the table is the one of the run.
    loaded = report.read_results(str(tmp_path / "out" / "results.json"))
    assert math.isnan(loaded["runs"][1]["metrics"]["a"])
    assert math.isnan(loaded["rows"][1]["epoch_seconds"])
    assert math.isnan(loaded["stl"]["shared_bottom/b"][0])
    assert loaded["rows"][0]["time_vs_ew"] == 1.0 and loaded["rows"][0]["a"] == [1.0, 0.0]
    assert report.table(loaded) == report.table(results)


def test_read_results_reads_files_with_nan_literals_of_older_versions(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(
        '{"tasks": {"a": {}}, "stl": {"m/a": [NaN, 0.0]}, "rows": [{"a": [NaN, 0.0], '
        '"delta_m": [NaN, NaN], "epoch_seconds": NaN, "time_vs_ew": null}], '
        '"runs": [{"metrics": {"a": NaN}, "epoch_seconds": 2.0}]}'
    )
    loaded = report.read_results(str(path))
    assert math.isnan(loaded["rows"][0]["a"][0]) and loaded["rows"][0]["time_vs_ew"] is None
    assert loaded["runs"][0]["epoch_seconds"] == 2.0


def test_to_json_refuses_nothing_finite_and_writes_null_for_non_finite():
    value = {"x": [1.0, math.nan, -math.inf, np.float64(math.inf), 2], "y": (math.inf,)}
    text = report.to_json(value)
    assert _strict_loads(text) == {"x": [1.0, None, None, None, 2], "y": [None]}


def test_an_undefined_stl_score_is_cached_as_null_and_read_back_as_nan(tmp_path, monkeypatch):
    calls = []
    _fake(monkeypatch, [_problem(), _problem()], calls, nan_task="a")
    config = _config(tmp_path, balancers=("ew",))
    runner.run_bench(config, print_fn=id)
    texts = sorted(p.read_text() for p in (tmp_path / "cache").iterdir())
    assert texts == ["1.0", "null"]
    calls.clear()
    printed = []
    results = runner.run_bench(config, print_fn=printed.append)
    # Both baselines come from the cache, the undefined one as NaN, without a warning.
    assert [tasks for _, tasks in calls] == [None]
    assert not [line for line in printed if line.startswith("Warning")]
    assert "STL shared_bottom a seed 0: mse=nan (cached" in "\n".join(printed)
    assert math.isnan(results["stl"]["shared_bottom/a"][0])


def test_the_stl_cache_is_not_reused_for_other_data(tmp_path, monkeypatch):
    calls = []
    # The same configuration three times: the same data, then other data
    # (another data_dir or a changed file behind the same dataset name).
    _fake(monkeypatch, [_problem(), _problem(), _problem(scale=3.0)], calls)
    config = _config(tmp_path, balancers=("ew",))

    def stl_trained():
        trained = [tasks for _, tasks in calls if tasks]
        calls.clear()
        return trained

    runner.run_bench(config, print_fn=id)
    assert stl_trained() == [["a"], ["b"]]
    runner.run_bench(config, print_fn=id)
    assert stl_trained() == []  # same data: cached
    printed = []
    runner.run_bench(config, print_fn=printed.append)
    assert stl_trained() == [["a"], ["b"]]
    assert "(trained" in "\n".join(printed) and "(cached" not in "\n".join(printed)


def test_data_fingerprint_sees_labels_shapes_dtypes_and_every_split():
    base = runner.data_fingerprint(_problem())
    assert runner.data_fingerprint(_problem()) == base
    p = _problem()
    p.test[1]["b"] = p.test[1]["b"].copy()
    p.test[1]["b"][5, 0] += 1.0  # one test label
    assert runner.data_fingerprint(p) != base
    p = _problem()
    p = Problem(p.name, p.tasks, p.train, (p.test[0], p.test[1]), p.test, p.trunk)
    assert runner.data_fingerprint(p) != base  # a validation split
    p = _problem()
    x = p.train[0].astype("float64")
    assert (
        runner.data_fingerprint(Problem("toy", p.tasks, (x, p.train[1]), None, p.test, "mlp"))
        != base
    )


def test_a_path_as_data_dir_does_not_stop_the_results_from_being_written(tmp_path, monkeypatch):
    calls = []
    _fake(monkeypatch, [_problem()], calls)
    config = _config(tmp_path, data_dir=pathlib.Path(tmp_path), stl=False)
    runner.run_bench(config, print_fn=id)
    saved = _strict_loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["data_dir"] == str(tmp_path)


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_strict_loads_helper_refuses_non_json_constants(value):
    with pytest.raises(ValueError, match="not strict JSON"):
        _strict_loads(f"[{value}]")
