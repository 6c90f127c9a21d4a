import csv
import json
import os
import re

import pytest

from keras_mtl.bench.problems import Problem, TaskSpec
from keras_mtl.bench.report import summarize
from keras_mtl.bench.runner import BenchConfig
from keras_mtl.cli import main


def test_bench_quick_end_to_end_and_stl_cache(tmp_path, capsys):
    args = [
        "bench",
        "--dataset",
        "synthetic",
        "--arch",
        "shared_bottom",
        "--balancers",
        "ew,fixed",
        "--quick",
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[1/4] STL shared_bottom task_1 seed 0" in out and "(trained" in out
    assert "| shared_bottom | fixed |" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["balancer"] for r in results["rows"]] == ["ew", "fixed"]
    # Equal and fixed-1 weights are the same method with the same seed.
    assert results["rows"][0]["task_1"] == results["rows"][1]["task_1"]
    assert results["rows"][0]["time_vs_ew"] == 1.0
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and set(rows[0]) >= {"arch", "balancer", "seed", "task_1", "task_2"}
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    assert main(args) == 0
    assert "(cached" in capsys.readouterr().out


@pytest.mark.skipif(
    not os.environ.get("KERAS_MTL_DATA_DIR"),
    reason="KERAS_MTL_DATA_DIR is not set: Census-Income files unavailable",
)
def test_bench_quick_on_census_income(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--quick",
                "--arch",
                "shared_bottom",
                "--out",
                str(tmp_path / "out"),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    row = results["rows"][0]
    # Two epochs on 10,000 examples already come near the published 0.9447 / 0.9932.
    assert row["income"][0] > 0.85 and row["marital"][0] > 0.95


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "nope"], "Unknown dataset 'nope'"),
        (["--arch", "tower"], r"Unknown architectures \['tower'\]"),
        (["--balancers", "ew,zz"], r"Unknown balancers \['zz'\]"),
    ],
)
def test_bench_errors(extra, message, capsys, tmp_path):
    assert main(["bench", "--dataset", "synthetic", "--out", str(tmp_path), *extra]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seeds", 0, r"`seeds`, expected a positive integer\. Received: seeds=0"),
        (
            "max_train",
            0,
            r"`max_train`, expected a positive integer or None\. Received: max_train=0",
        ),
        ("max_eval", 2.5, r"max_eval=2\.5"),
        ("learning_rate", float("nan"), r"positive finite number\. Received: learning_rate=nan"),
        ("learning_rate", -1e-3, r"learning_rate=-0\.001"),
    ],
)
def test_bench_config_names_the_invalid_field(field, value, message):
    from keras_mtl.bench import BenchConfig

    with pytest.raises(ValueError, match=message):
        BenchConfig(dataset="synthetic", **{field: value}).validate()


def test_bench_missing_data_files(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KERAS_MTL_DATA_DIR", raising=False)
    code = main(
        [
            "bench",
            "--dataset",
            "multi_mnist",
            "--data-dir",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "out"),
            "--quick",
            "--no-stl",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "mnist" in err


def test_summary_delta_m_and_pareto_by_hand():
    spec_auc = TaskSpec(1, "sigmoid", "binary_crossentropy", "auc", True)
    spec_mse = TaskSpec(1, None, "mse", "mse", False)
    problem = Problem("toy", {"a": spec_auc, "b": spec_mse}, None, None, None, "mlp")
    config = BenchConfig(dataset="synthetic", archs=("mmoe",), balancers=("ew", "pcgrad"), seeds=2)
    runs = [
        {
            "arch": "mmoe",
            "balancer": "ew",
            "seed": 0,
            "metrics": {"a": 0.88, "b": 0.50},
            "epoch_seconds": 2.0,
        },
        {
            "arch": "mmoe",
            "balancer": "ew",
            "seed": 1,
            "metrics": {"a": 0.92, "b": 0.50},
            "epoch_seconds": 2.0,
        },
        {
            "arch": "mmoe",
            "balancer": "pcgrad",
            "seed": 0,
            "metrics": {"a": 0.80, "b": 0.60},
            "epoch_seconds": 3.0,
        },
        {
            "arch": "mmoe",
            "balancer": "pcgrad",
            "seed": 1,
            "metrics": {"a": 0.80, "b": 0.60},
            "epoch_seconds": 3.0,
        },
    ]
    stl = {
        ("mmoe", "a", 0): 0.80,
        ("mmoe", "a", 1): 0.80,
        ("mmoe", "b", 0): 0.40,
        ("mmoe", "b", 1): 0.40,
    }
    rows = summarize(problem, config, runs, stl)["rows"]
    ew, pcgrad = rows
    # seed 0: a +10 %, b -25 % -> -7.5 ; seed 1: a +15 %, b -25 % -> -5.0
    assert ew["delta_m"][0] == pytest.approx(-6.25)
    assert ew["delta_m"][1] == pytest.approx((2 * 1.25**2) ** 0.5)
    assert pcgrad["delta_m"][0] == pytest.approx((0 - 50) / 2)
    assert ew["a"][0] == pytest.approx(0.90) and pcgrad["time_vs_ew"] == pytest.approx(1.5)
    assert ew["pareto"] and not pcgrad["pareto"]
