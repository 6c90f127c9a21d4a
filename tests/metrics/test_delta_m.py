import numpy as np
import pytest

import keras_mtl
from keras_mtl.metrics import delta_m, delta_m_per_task


def test_exported_from_the_package():
    assert keras_mtl.metrics.delta_m is delta_m


def test_hand_computed_mixed_directions_and_several_metrics():
    # NYUv2-like: segmentation (2 metrics, higher better), depth (2, lower better),
    # normals (mean error lower better, within-11.25 higher better).
    results = {
        "seg": {"miou": 0.44, "pix_acc": 0.69},
        "depth": {"abs_err": 0.54, "rel_err": 0.22},
        "normal": {"mean": 25.0, "within_11": 0.30},
    }
    stl = {
        "seg": {"miou": 0.40, "pix_acc": 0.75},
        "depth": {"abs_err": 0.60, "rel_err": 0.20},
        "normal": {"mean": 20.0, "within_11": 0.40},
    }
    higher = {
        "miou": True,
        "pix_acc": True,
        "abs_err": False,
        "rel_err": False,
        "mean": False,
        "within_11": True,
    }
    # seg: (+10% , -8%) -> +1%; depth: (+10%, -10%) -> 0%; normal: (-25%, -25%) -> -25%.
    per_task = delta_m_per_task(results, stl, higher)
    assert per_task == pytest.approx({"seg": 1.0, "depth": 0.0, "normal": -25.0})
    assert delta_m(results, stl, higher) == pytest.approx(-8.0)
    # Averaged over all six metrics instead: (10 - 8 + 10 - 10 - 25 - 25) / 6 = -8.
    assert delta_m(results, stl, higher, average="metrics") == pytest.approx(-8.0)
    # Unequal metric counts make the two averages differ: drop one seg metric.
    del results["seg"]["pix_acc"], stl["seg"]["pix_acc"]
    assert delta_m(results, stl, higher) == pytest.approx((10 + 0 - 25) / 3)
    assert delta_m(results, stl, higher, average="metrics") == pytest.approx(-40 / 5)


def test_per_task_direction_dicts_and_nested_direction_dicts():
    results = {"a": {"auc": 0.9, "loss": 0.3}, "b": {"auc": 0.8, "loss": 0.5}}
    stl = {"a": {"auc": 0.8, "loss": 0.4}, "b": {"auc": 0.8, "loss": 0.4}}
    nested = {"a": {"auc": True, "loss": False}, "b": {"auc": True, "loss": False}}
    by_metric = {"auc": True, "loss": False}
    # a: (12.5 + 25) / 2 = 18.75; b: (0 - 25) / 2 = -12.5; mean 3.125.
    assert delta_m(results, stl, nested) == pytest.approx(3.125)
    assert delta_m(results, stl, by_metric) == pytest.approx(3.125)
    # A bool per task applies to all its metrics.
    assert delta_m(results, stl, {"a": True, "b": True}) == pytest.approx(
        ((12.5 - 25) / 2 + 25 / 2) / 2
    )


def test_flat_forms():
    assert delta_m({"x": 1.1, "y": 2.0}, {"x": 1.0, "y": 2.5}, {"x": True, "y": False}) == (
        pytest.approx((10 + 20) / 2)
    )
    assert delta_m([0.9, 3.0], [1.0, 2.0], [True, False]) == pytest.approx((-10 - 50) / 2)
    assert delta_m(np.array([2.0, 4.0]), np.array([1.0, 2.0]), True) == pytest.approx(100.0)
    assert delta_m_per_task([0.9, 3.0], [1.0, 2.0], False) == pytest.approx({0: 10.0, 1: -50.0})


def test_equal_results_give_zero_and_sign_convention():
    base = {"a": {"acc": 0.7}, "b": {"mae": 1.3}}
    assert delta_m(base, base, {"acc": True, "mae": False}) == 0.0
    better = {"a": {"acc": 0.77}, "b": {"mae": 1.17}}  # both 10% better
    assert delta_m(better, base, {"acc": True, "mae": False}) == pytest.approx(10.0)


def test_matches_a_direct_formula_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        tasks = int(rng.integers(1, 5))
        res, base, hib, expected = {}, {}, {}, []
        for t in range(tasks):
            k = int(rng.integers(1, 4))
            m = rng.uniform(0.1, 2.0, k)
            b = rng.uniform(0.1, 2.0, k)
            h = rng.random(k) < 0.5
            res[f"t{t}"] = {f"m{i}": float(m[i]) for i in range(k)}
            base[f"t{t}"] = {f"m{i}": float(b[i]) for i in range(k)}
            hib[f"t{t}"] = {f"m{i}": bool(h[i]) for i in range(k)}
            expected.append(np.mean(np.where(h, 1, -1) * (m - b) / b))
        assert delta_m(res, base, hib) == pytest.approx(100 * np.mean(expected))


def test_negative_baseline_keeps_positive_is_better():
    # A higher-is-better metric moving from -2 to -1 improved by 50%.
    assert delta_m({"r2": -1.0}, {"r2": -2.0}, True) == pytest.approx(50.0)


def test_clear_errors():
    with pytest.raises(ValueError, match="same tasks.*only in baselines: \\['b'\\]"):
        delta_m({"a": 1.0}, {"a": 1.0, "b": 2.0}, True)
    with pytest.raises(ValueError, match="Task 'a'.*metrics"):
        delta_m({"a": {"auc": 0.9}}, {"a": {"auc": 0.8, "ll": 0.3}}, True)
    with pytest.raises(ValueError, match="baseline of task 'a', metric 'auc' is 0"):
        delta_m({"a": {"auc": 0.9}}, {"a": {"auc": 0.0}}, True)
    with pytest.raises(ValueError, match="Non-finite"):
        delta_m({"a": float("nan")}, {"a": 1.0}, True)
    with pytest.raises(ValueError, match="no entry for task 'b' or metric 'mae'"):
        delta_m(
            {"a": {"auc": 0.9}, "b": {"mae": 1.0}},
            {"a": {"auc": 0.8}, "b": {"mae": 2.0}},
            {"auc": True},
        )
    with pytest.raises(ValueError, match="has no entry for metric 'll'"):
        delta_m({"a": {"ll": 0.9}}, {"a": {"ll": 0.8}}, {"a": {"auc": True}})
    with pytest.raises(ValueError, match="2 entries"):
        delta_m([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [True, False])
    with pytest.raises(TypeError, match="must be bools"):
        delta_m({"a": 1.0}, {"a": 2.0}, {"a": "yes"})
    with pytest.raises(TypeError, match="must be a number"):
        delta_m({"a": "0.9"}, {"a": 1.0}, True)
    with pytest.raises(TypeError, match="`results` must be a dict"):
        delta_m(0.9, 1.0, True)
    with pytest.raises(ValueError, match=r"must be flat.*Received: results=\[\[1.0, 2.0\]\]"):
        delta_m([[1.0, 2.0]], [1.0, 2.0], True)
    for ragged in ([1.0, [2.0, 3.0]], np.ones((2, 2))):
        with pytest.raises(ValueError, match="must be flat"):
            delta_m(ragged, [1.0, 2.0], True)
    with pytest.raises(TypeError, match=r"`baselines\[1\]` must be a number"):
        delta_m([1.0, 2.0], [1.0, "2"], True)
    with pytest.raises(ValueError, match="`results` is empty"):
        delta_m({}, {}, True)
    with pytest.raises(ValueError, match="Received: average='median'"):
        delta_m({"a": 1.0}, {"a": 2.0}, True, average="median")


def test_task_keys_win_over_metric_names():
    # "loss" is lower-is-better by metric name, but task "b" names its own
    # direction: b's loss counts as higher-is-better.
    results = {"a": {"loss": 0.3}, "b": {"loss": 0.6}}
    stl = {"a": {"loss": 0.4}, "b": {"loss": 0.4}}
    per_task = delta_m_per_task(results, stl, {"loss": False, "b": True})
    assert per_task == pytest.approx({"a": 25.0, "b": 50.0})


def test_numpy_bools_are_directions_and_bools_are_not_numbers():
    # Directions often come from NumPy (a mask of metric kinds).
    directions = np.array([True, False])
    assert delta_m([0.9, 3.0], [1.0, 2.0], directions) == pytest.approx((-10 - 50) / 2)
    assert delta_m({"a": 1.1}, {"a": 1.0}, {"a": np.True_}) == pytest.approx(10.0)
    # A bool result is a mistake (a direction passed as a value), not 1.0.
    for value in (True, np.bool_(False)):
        with pytest.raises(TypeError, match=r"`results\['a'\]` must be a number"):
            delta_m({"a": value}, {"a": 1.0}, True)
