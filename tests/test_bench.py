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
        ("learning_rate", 0.0, r"positive finite number\. Received: learning_rate=0\.0"),
        # Nothing to run is an error, not an empty report.
        ("archs", (), r"Unknown architectures \[\]; .* Received: arch=\[\]"),
        ("balancers", (), r"Received: balancers=\[\]"),
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


def test_score_skips_examples_with_nan_labels():
    import numpy as np

    from keras_mtl.bench.scores import score

    y = np.array([[0.0], [np.nan], [1.0], [1.0], [np.nan], [0.0]])
    p = np.array([[0.1], [0.9], [0.8], [0.35], [0.0], [0.4]])
    # Kept: labels 0, 1, 1, 0 with scores 0.1, 0.8, 0.35, 0.4 -> 3 of 4 pairs ordered.
    assert score("auc", y, p) == pytest.approx(0.75, abs=1e-3)
    # MAE over the kept rows only: (0.1 + 0.2 + 0.65 + 0.4) / 4.
    assert score("mae", y, p) == pytest.approx(0.3375, abs=1e-6)


def _row(arch, balancer, seed, a, b, seconds=1.0):
    return {
        "arch": arch,
        "balancer": balancer,
        "seed": seed,
        "metrics": {"a": a, "b": b},
        "epoch_seconds": seconds,
    }


def _toy_problem():
    spec_auc = TaskSpec(1, "sigmoid", "binary_crossentropy", "auc", True)
    spec_mse = TaskSpec(1, None, "mse", "mse", False)
    return Problem("toy", {"a": spec_auc, "b": spec_mse}, None, None, None, "mlp")


def test_summary_uses_each_seeds_own_stl_baseline():
    config = BenchConfig(dataset="synthetic", archs=("mmoe",), balancers=("ew",), seeds=2)
    runs = [_row("mmoe", "ew", 0, 0.88, 0.50), _row("mmoe", "ew", 1, 0.88, 0.50)]
    stl = {
        ("mmoe", "a", 0): 0.80,
        ("mmoe", "b", 0): 0.40,
        ("mmoe", "a", 1): 0.88,
        ("mmoe", "b", 1): 0.50,
    }
    (row,) = summarize(_toy_problem(), config, runs, stl)["rows"]
    # seed 0: (+10 - 25) / 2 = -7.5 ; seed 1 equals its baseline: 0.
    assert row["delta_m"][0] == pytest.approx(-3.75)
    assert row["delta_m"][1] == pytest.approx(7.5 / 2**0.5)


def test_pareto_counts_a_tie_on_one_task_as_dominated():
    config = BenchConfig(dataset="synthetic", archs=("mmoe",), balancers=("ew", "uw", "dwa"))
    runs = [
        _row("mmoe", "ew", 0, 0.90, 0.50),
        _row("mmoe", "uw", 0, 0.90, 0.40),  # same AUC, lower MSE: dominates ew
        _row("mmoe", "dwa", 0, 0.95, 0.60),  # better AUC, worse MSE: a trade-off
    ]
    rows = summarize(_toy_problem(), config, runs, {})["rows"]
    assert [r["pareto"] for r in rows] == [False, True, True]


def test_pareto_keeps_rows_with_equal_means_on_every_task():
    config = BenchConfig(dataset="synthetic", archs=("mmoe",), balancers=("ew", "fixed", "uw"))
    runs = [
        _row("mmoe", "ew", 0, 0.90, 0.50),
        _row("mmoe", "fixed", 0, 0.90, 0.50),  # fixed weights of 1 are ew: the same scores
        _row("mmoe", "uw", 0, 0.80, 0.60),
    ]
    rows = summarize(_toy_problem(), config, runs, {})["rows"]
    # Equal is not better: neither of two equal rows dominates the other.
    assert [r["pareto"] for r in rows] == [True, True, False]


def test_table_cells_by_hand():
    from keras_mtl.bench.report import table

    config = BenchConfig(dataset="synthetic", archs=("mmoe",), balancers=("ew", "uw"), seeds=2)
    runs = [
        _row("mmoe", "ew", 0, 0.88, 0.50, 2.0),
        _row("mmoe", "ew", 1, 0.92, 0.50, 2.0),
        _row("mmoe", "uw", 0, 0.80, 0.40, 3.0),
        _row("mmoe", "uw", 1, 0.80, 0.40, 3.0),
    ]
    stl = {
        ("mmoe", "a", 0): 0.78,
        ("mmoe", "a", 1): 0.82,
        ("mmoe", "b", 0): 0.40,
        ("mmoe", "b", 1): 0.40,
    }
    lines = table(summarize(_toy_problem(), config, runs, stl)).splitlines()
    assert lines[0] == "| arch | balancer | a auc | b mse | Δm % | s/epoch | vs ew | Pareto |"
    # STL rows: mean ± sample std over seeds, in the task's own column.
    assert lines[2] == "| mmoe | STL (a) | 0.8000 ± 0.0283 |  |  |  |  |  |"
    assert lines[3] == "| mmoe | STL (b) |  | 0.4000 ± 0.0000 |  |  |  |  |"
    # ew: seed 0 (12.82 - 25) / 2 = -6.09, seed 1 (12.20 - 25) / 2 = -6.40: -6.25 ± 0.22.
    # ew and uw trade AUC against MSE: both Pareto-optimal.
    assert lines[4] == (
        "| mmoe | ew | 0.9000 ± 0.0283 | 0.5000 ± 0.0000 | -6.25 ± 0.22 | 2.00 | 1.00x | * |"
    )
    # uw: seed 0 (+2.564 + 0) / 2 = +1.282, seed 1 (-2.439 + 0) / 2 = -1.220: +0.03 ± 1.77.
    assert lines[5].startswith("| mmoe | uw | 0.8000 ± 0.0000 | 0.4000 ± 0.0000 | +0.03 ± 1.77 |")
    assert lines[5].endswith("| 3.00 | 1.50x | * |")


def test_stl_cache_key_changes_with_every_setting(monkeypatch):
    from keras_mtl.bench import runner
    from keras_mtl.bench.runner import _stl_key

    data = "0" * 32  # a data fingerprint
    base = BenchConfig(dataset="synthetic", max_train=100, max_eval=50)
    key = _stl_key(base, "mmoe", "a", 0, data)
    assert key == _stl_key(
        BenchConfig(dataset="synthetic", max_train=100, max_eval=50), "mmoe", "a", 0, data
    )
    changed = {
        "dataset": "census_income",
        "epochs": 7,
        "batch_size": 64,
        "learning_rate": 1e-2,
        "max_train": 200,
        "max_eval": 60,
    }
    for field, value in changed.items():
        other = BenchConfig(**{**vars(base), field: value})
        assert _stl_key(other, "mmoe", "a", 0, data) != key, field
    assert _stl_key(base, "shared_bottom", "a", 0, data) != key
    assert _stl_key(base, "mmoe", "b", 0, data) != key
    assert _stl_key(base, "mmoe", "a", 1, data) != key
    # Other data (another data_dir, a changed file) is another key.
    assert _stl_key(base, "mmoe", "a", 0, "1" * 32) != key
    # A new cache version (a change to how baselines train) retires old entries.
    monkeypatch.setattr(runner, "CACHE_VERSION", runner.CACHE_VERSION + 1)
    assert _stl_key(base, "mmoe", "a", 0, data) != key


def test_problem_task_specs_and_metric_directions(monkeypatch):
    import numpy as np

    from keras_mtl.bench.problems import LOADERS, load_problem
    from keras_mtl.datasets import census_income, multi_mnist, qm9

    x = np.zeros((4, 3), "float32")

    def split(*tasks):
        return x, {t: np.zeros((4, 1), "float32") for t in tasks}

    calls = []

    def fake_census(data_dir, group):
        calls.append(("census", group))
        tasks = census_income.TASK_GROUPS[group]
        return split(*tasks), split(*tasks), split(*tasks)

    def fake_images(data_dir, variant):
        calls.append(("images", variant))
        return split("left", "right"), split("left", "right")

    def fake_qm9(data_dir, features):
        calls.append(("qm9", features))
        return split("mu", "homo"), split("mu", "homo"), split("mu", "homo")

    monkeypatch.setattr(census_income, "load_data", fake_census)
    monkeypatch.setattr(multi_mnist, "load_data", fake_images)
    monkeypatch.setattr(qm9, "load_data", fake_qm9)
    # dataset -> (metric, higher is better, classes, trunk)
    expected = {
        "census_income": ("auc", True, 1, "mlp"),
        "census_income_group2": ("auc", True, 1, "mlp"),
        "multi_mnist": ("accuracy", True, 10, "lenet"),
        "multi_fashion": ("accuracy", True, 10, "lenet"),
        "multi_fashion_mnist": ("accuracy", True, 10, "lenet"),
        "synthetic": ("mse", False, 1, "mlp"),
        "qm9": ("mae", False, 1, "mlp"),
    }
    assert set(LOADERS) == set(expected)
    for name, (metric, higher, units, trunk) in expected.items():
        problem = load_problem(name, max_train=3, max_eval=2)
        assert problem.trunk == trunk, name
        for spec in problem.tasks.values():
            assert (spec.metric, spec.higher_is_better, spec.units) == (metric, higher, units)
        assert len(problem.train[0]) == 3 and len(problem.test[0]) == 2
    assert calls == [
        ("census", 1),
        ("census", 2),
        ("images", "mnist"),
        ("images", "fashion"),
        ("images", "fashion_mnist"),
        ("qm9", "descriptors"),
    ]
    assert list(load_problem("census_income_group2").tasks) == ["education", "marital"]


def test_train_one_keeps_the_weights_of_the_best_validation_epoch(monkeypatch):
    import numpy as np

    from keras_mtl.bench import runner
    from keras_mtl.bench.scores import score

    rng = np.random.default_rng(0)

    def split(n, sign):
        x = rng.normal(size=(n, 6)).astype("float32")
        return x, {"a": sign * 2.0 * x[:, :1], "b": sign * x[:, 1:2]}

    spec = TaskSpec(1, None, "mse", "mse", False)
    # Validation labels are the negated relation, so fitting the training data
    # makes the validation loss worse each epoch; the test labels follow the
    # training relation, so a selection on the test split would pick the last.
    problem = Problem(
        "toy", {"a": spec, "b": spec}, split(128, 1.0), split(32, -1.0), split(32, 1.0), "mlp"
    )
    epochs = []

    class Recording(runner._EpochClock):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            assert self.val[0] is problem.val[0]
            pred = self.model.predict(problem.val[0], verbose=0)
            loss = sum(np.mean((pred[t] - problem.val[1][t]) ** 2) for t in ("a", "b"))
            epochs.append((loss, self.model.get_weights(), self.model))

    monkeypatch.setattr(runner, "_EpochClock", Recording)
    config = BenchConfig(dataset="synthetic", epochs=4, batch_size=16, learning_rate=1e-2)
    result = runner.train_one(problem, "shared_bottom", "ew", 0, config)
    losses = [loss for loss, _, _ in epochs]
    best = int(np.argmin(losses))
    assert len(epochs) == 4 and best != 3, losses
    model = epochs[0][2]
    model.set_weights(epochs[best][1])
    pred = model.predict(problem.test[0], verbose=0)
    for t in ("a", "b"):
        expected = score("mse", problem.test[1][t], pred[t])
        assert result["metrics"][t] == pytest.approx(expected, rel=1e-5)


def test_summary_keeps_baselines_and_speed_ratios_per_architecture():
    config = BenchConfig(
        dataset="synthetic", archs=("shared_bottom", "mmoe"), balancers=("ew", "uw")
    )
    runs = [
        _row("shared_bottom", "ew", 0, 0.88, 0.44, 1.0),
        _row("shared_bottom", "uw", 0, 0.88, 0.44, 2.0),
        _row("mmoe", "ew", 0, 0.99, 0.45, 4.0),
        _row("mmoe", "uw", 0, 0.99, 0.45, 6.0),
    ]
    stl = {
        ("shared_bottom", "a", 0): 0.80,
        ("shared_bottom", "b", 0): 0.40,
        ("mmoe", "a", 0): 0.90,
        ("mmoe", "b", 0): 0.50,
    }
    results = summarize(_toy_problem(), config, runs, stl)
    # Each architecture's STL rows average its own baselines only.
    assert results["stl"] == {
        "shared_bottom/a": (0.80, 0.0),
        "shared_bottom/b": (0.40, 0.0),
        "mmoe/a": (0.90, 0.0),
        "mmoe/b": (0.50, 0.0),
    }
    # Against its own arch's STL: shared_bottom +10 % / -10 % -> 0; mmoe +10 % / +10 % -> 10.
    assert [r["delta_m"][0] for r in results["rows"]] == pytest.approx([0.0, 0.0, 10.0, 10.0])
    # Each row's time is over its own architecture's ew row, not the last arch's.
    assert [r["time_vs_ew"] for r in results["rows"]] == pytest.approx([1.0, 2.0, 1.0, 1.5])


def test_summary_epoch_seconds_is_the_median_over_seeds():
    config = BenchConfig(dataset="synthetic", archs=("mmoe",), balancers=("ew", "uw"), seeds=3)
    # One seed ran on a busy machine: the median (1.2 s) ignores it, the mean (4.07 s) would not.
    runs = [_row("mmoe", "ew", s, 0.9, 0.5, t) for s, t in enumerate((1.0, 1.2, 10.0))]
    runs += [_row("mmoe", "uw", s, 0.9, 0.5, 2.4) for s in range(3)]
    ew, uw = summarize(_toy_problem(), config, runs, {})["rows"]
    assert ew["epoch_seconds"] == pytest.approx(1.2) and ew["seeds"] == 3
    assert uw["time_vs_ew"] == pytest.approx(2.0)


def test_table_without_ew_or_stl_has_no_ratio_and_no_delta_column():
    from keras_mtl.bench.report import table

    config = BenchConfig(dataset="synthetic", archs=("mmoe",), balancers=("uw", "mgda"))
    runs = [_row("mmoe", "uw", 0, 0.9, 0.5, 2.0), _row("mmoe", "mgda", 0, 0.8, 0.6, 3.0)]
    results = summarize(_toy_problem(), config, runs, {})
    # Without an ew row there is nothing to divide by.
    assert [r["time_vs_ew"] for r in results["rows"]] == [None, None]
    assert table(results).splitlines() == [
        "| arch | balancer | a auc | b mse | s/epoch | vs ew | Pareto |",
        "|---|---|---|---|---|---|---|",
        "| mmoe | uw | 0.9000 ± 0.0000 | 0.5000 ± 0.0000 | 2.00 | - | * |",
        "| mmoe | mgda | 0.8000 ± 0.0000 | 0.6000 ± 0.0000 | 3.00 | - |  |",
    ]


def test_pareto_plot_puts_the_first_task_on_x_and_the_second_on_y(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_mtl.bench.report import plot_pareto

    figures = []
    close = plt.close
    # Keep the figure that plot_pareto closes, to read its axes back.
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), close(fig)))
    results = {
        "dataset": "toy",
        "tasks": {"a": {"metric": "auc"}, "b": {"metric": "mse"}},
        "stl": {"mmoe/a": (0.8, 0.0), "mmoe/b": (0.4, 0.0)},
        "rows": [
            {"arch": "mmoe", "balancer": "ew", "a": (0.88, 0.01), "b": (0.45, 0.02), "pareto": True}
        ],
    }
    plot_pareto(results, str(tmp_path / "p.png"))
    (ax,) = figures[0].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("a auc", "b mse")
    assert [(t.get_text(), tuple(t.xy)) for t in ax.texts] == [("mmoe/ew", (0.88, 0.45))]
    # The STL baselines: a vertical line at task a's, a horizontal one at task b's.
    lines = {(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.lines}
    assert ((0.8, 0.8), (0, 1)) in lines and ((0, 1), (0.4, 0.4)) in lines


def _tiny_problem(n=32):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = {"a": x[:, :1] * 2.0, "b": x[:, 1:2] - x[:, 2:]}
    spec = TaskSpec(1, None, "mse", "mse", False)
    return Problem("toy", {"a": spec, "b": spec}, (x, y), None, (x, y), "mlp")


def test_train_one_applies_its_seed():
    from keras_mtl.bench.runner import train_one

    problem = _tiny_problem()
    config = BenchConfig(dataset="synthetic", epochs=1, batch_size=32)

    def metrics(seed):
        return train_one(problem, "shared_bottom", "ew", seed, config)["metrics"]

    # The seed sets the initial weights: same seed, same scores; another seed, others.
    first = metrics(0)
    assert metrics(0) == first
    assert metrics(1) != first


@pytest.mark.parametrize("seconds, expected", [(0.0, 3), (1e9, 0)])
def test_train_one_reports_progress_on_long_jobs_only(monkeypatch, seconds, expected):
    from keras_mtl.bench import runner

    monkeypatch.setattr(runner, "PROGRESS_SECONDS", seconds)
    lines = []
    config = BenchConfig(dataset="synthetic", epochs=3, batch_size=32)
    runner.train_one(_tiny_problem(), "shared_bottom", "ew", 0, config, progress=lines.append)
    assert len(lines) == expected
    for epoch, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"epoch {epoch}/3: loss \d+\.\d{{4}} \(\d+ s\)", line), line


def test_train_one_epoch_seconds_leaves_out_the_first_epoch(monkeypatch):
    from keras_mtl.bench import runner

    # Epoch 0 includes tracing (30 s); the median of the others is 2 s
    # (with the first: 4 s; their mean: 3 s).
    fake = [30.0, 1.0, 2.0, 6.0]

    class FakeClock(runner._EpochClock):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            self.times[-1] = fake[epoch]

    monkeypatch.setattr(runner, "_EpochClock", FakeClock)
    config = BenchConfig(dataset="synthetic", epochs=4, batch_size=32)
    result = runner.train_one(_tiny_problem(), "shared_bottom", "ew", 0, config)
    assert result["epoch_seconds"] == 2.0
    # A single epoch is all there is.
    fake[0] = 5.0
    one_epoch = BenchConfig(**{**vars(config), "epochs": 1})
    result = runner.train_one(_tiny_problem(), "shared_bottom", "ew", 0, one_epoch)
    assert result["epoch_seconds"] == 5.0


def test_run_bench_trains_one_stl_model_per_task_and_seed_and_caches_it(tmp_path, monkeypatch):
    from keras_mtl.bench import runner

    calls = []

    def fake_train_one(problem, arch, balancer, seed, config, tasks=None, progress=None):
        # STL baselines score seed + 1 (MSE); MTL models 10 % lower: Δm = +10 every seed.
        calls.append((arch, balancer, seed, tasks, config.epochs))
        # max_train caps the training split, max_eval the test split.
        assert (len(problem.train[0]), len(problem.test[0])) == (64, 32)
        scale = 1.0 if tasks else 0.9
        names = tasks or list(problem.tasks)
        return {"metrics": {t: scale * (seed + 1) for t in names}, "epoch_seconds": 1.0}

    monkeypatch.setattr(runner, "train_one", fake_train_one)
    folders = []
    load = runner.load_problem
    monkeypatch.setattr(
        runner,
        "load_problem",
        lambda name, data_dir, *a: folders.append(data_dir) or load(name, data_dir, *a),
    )
    config = BenchConfig(
        dataset="synthetic",
        data_dir="/data",
        archs=("shared_bottom",),
        balancers=("ew", "uw"),
        seeds=2,
        epochs=1,
        max_train=64,
        max_eval=32,
        out_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
    )
    results = runner.run_bench(config, print_fn=lambda text: None)
    stl_calls = [(a, b, s, t) for a, b, s, t, _ in calls if t]
    # One single-task ew model per task and seed, each trained on its task only.
    assert stl_calls == [
        ("shared_bottom", "ew", s, [t]) for t in ("task_1", "task_2") for s in (0, 1)
    ]
    assert [(b, s) for _, b, s, t, _ in calls if not t] == [
        ("ew", 0),
        ("ew", 1),
        ("uw", 0),
        ("uw", 1),
    ]
    assert results["stl"]["shared_bottom/task_1"][0] == pytest.approx(1.5)
    assert folders == ["/data"]
    # Each seed is compared with its own baseline, also when read back from the cache.
    assert [r["delta_m"] for r in results["rows"]] == [pytest.approx((10.0, 0.0))] * 2
    calls.clear()
    again = runner.run_bench(config, print_fn=lambda text: None)
    assert all(not t for _, _, _, t, _ in calls)
    assert again["stl"] == results["stl"] and again["rows"] == results["rows"]
    # Another setting is another baseline: retrained, not read from the cache.
    calls.clear()
    runner.run_bench(BenchConfig(**{**vars(config), "epochs": 2}), print_fn=lambda text: None)
    assert [e for _, _, _, t, e in calls if t] == [2] * 4


def test_load_problem_subsets_each_split_from_itself_with_aligned_labels(monkeypatch):
    import numpy as np

    from keras_mtl.bench import problems

    def split(start, n):
        # Example i has feature start + i and label 10 x feature: alignment is checkable.
        x = np.arange(start, start + n, dtype="float32")[:, None]
        return x, {"a": 10 * x}

    spec = TaskSpec(1, None, "mse", "mse", False)
    folders = []

    def fake(data_dir):
        folders.append(data_dir)
        return {"a": spec}, split(0, 50), split(100, 20), split(200, 20), "mlp"

    monkeypatch.setitem(problems.LOADERS, "toy", fake)
    problem = problems.load_problem("toy", "/data", max_train=10, max_eval=5)
    # --data-dir reaches the loader.
    assert folders == ["/data"]
    for (x, y), (low, high), n in zip(
        (problem.train, problem.val, problem.test),
        ((0, 50), (100, 120), (200, 220)),
        (10, 5, 5),
        strict=True,
    ):
        # Each split is a subset of its own source (no test examples in train), in order.
        assert len(x) == n and low <= x.min() and x.max() < high
        assert len(np.unique(x)) == n and (np.diff(x[:, 0]) > 0).all()
        np.testing.assert_array_equal(y["a"], 10 * x)
    # A random subset, not the first rows; the same one for the same seed.
    assert problem.train[0][:, 0].tolist() != list(range(10))
    again = problems.load_problem("toy", max_train=10, max_eval=5)
    np.testing.assert_array_equal(again.train[0], problem.train[0])
    # No cap, or a cap above the size: the whole split.
    assert len(problems.load_problem("toy", max_train=500).train[0]) == 50


def test_build_model_heads_trunk_and_mmoe_settings():
    import numpy as np

    from keras_mtl.bench.architectures import build_model

    spec = TaskSpec(1, "sigmoid", "binary_crossentropy", "auc", True)
    data = (np.full((4, 3), 5.0, "float32"), {"a": np.zeros((4, 1)), "b": np.zeros((4, 1))})
    problem = Problem("toy", {"a": spec, "b": spec}, data, None, data, "mlp")
    model = build_model(problem, "mmoe")
    # The documented 8 experts of 16 units, one gate per task.
    config = model.get_layer("mmoe").get_config()
    assert (config["num_experts"], tuple(config["expert_units"]), config["num_tasks"]) == (
        8,
        (16,),
        2,
    )
    # The head applies the task's activation: a sigmoid task's outputs are probabilities,
    # as binary_crossentropy (from_logits=False) expects.
    for y in model(data[0]).values():
        assert np.all((np.asarray(y) > 0) & (np.asarray(y) < 1))
    assert model.get_layer("a").get_config()["activation"] == "sigmoid"

    # The image problems get the LeNet trunk: conv 5x5x10 (260) and 5x5x20 (5,020),
    # 4x4x20 -> Dense(50) (16,050); a Dense(64) bottom (3,264); per task Dense(32)
    # (2,080) and a 10-way head (330).
    images = (np.zeros((2, 28, 28, 1), "float32"), {"l": np.zeros((2,)), "r": np.zeros((2,))})
    digit = TaskSpec(10, "softmax", "sparse_categorical_crossentropy", "accuracy", True)
    lenet = Problem("mnist", {"l": digit, "r": digit}, images, None, images, "lenet")
    assert build_model(lenet, "shared_bottom").count_params() == 260 + 5020 + 16050 + 3264 + 2 * (
        2080 + 330
    )


def test_train_one_trains_with_the_configured_batch_size(monkeypatch):
    from keras_mtl.bench import runner

    steps = []

    class Counting(runner._EpochClock):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)

    monkeypatch.setattr(runner, "_EpochClock", Counting)
    config = BenchConfig(dataset="synthetic", epochs=1, batch_size=8)
    runner.train_one(_tiny_problem(32), "shared_bottom", "ew", 0, config)
    # 32 examples in batches of 8: 4 steps.
    assert steps == [0, 1, 2, 3]


def test_auc_resolves_scores_closer_than_a_thousandth():
    from keras_mtl.bench.scores import score

    # Published AUCs differ in the fourth decimal; on a coarser threshold grid
    # (Keras's default 200, or 2000) these two scores share a bucket and the AUC is 0.5.
    assert score("auc", [0, 1], [0.50002, 0.50018]) == pytest.approx(1.0, abs=1e-6)


def test_epoch_clock_selects_on_the_summed_task_losses_not_the_weighted_loss():
    from keras_mtl.bench.runner import _EpochClock

    class FakeModel:
        # Epoch 0: task losses 1 + 1 = 2, weighted loss 5; epoch 1: 3 + 0 = 3, weighted 1.
        logs = [
            {"loss": 5.0, "a_loss": 1.0, "b_loss": 1.0},
            {"loss": 1.0, "a_loss": 3.0, "b_loss": 0.0},
        ]

        def evaluate(self, *args, **kwargs):
            return self.logs[self.epoch]

        def get_weights(self):
            return [self.epoch]

    model = FakeModel()
    clock = _EpochClock(("x", "y"), ["a", "b"], batch_size=8)
    clock.set_model(model)
    for model.epoch in (0, 1):
        clock.on_epoch_begin(model.epoch)
        clock.on_epoch_end(model.epoch)
    # The balancer's weights do not choose the epoch: the smallest unweighted sum does.
    assert clock.best == (2.0, [0]) and len(clock.times) == 2
