import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import DTP


def _focal(k, gamma, eps=1e-4):
    k = np.clip(k, eps, 1 - eps)
    return -((1 - k) ** gamma) * np.log(k)


def test_loss_fallback_with_moving_average():
    rng = np.random.default_rng(0)
    steps = rng.uniform(0.05, 3.0, size=(6, 2))
    b = DTP(gamma=2.0, alpha=0.3)
    k = None
    for losses in steps:
        kpi = np.exp(-losses)
        k = kpi if k is None else 0.3 * kpi + 0.7 * k
        np.testing.assert_allclose(b.aggregate(None, losses).weights, _focal(k, 2.0), rtol=1e-5)
    np.testing.assert_allclose(np.array(b.kpi_average), k, rtol=1e-5)


def test_metric_kpi_from_observe_with_masks():
    b = DTP(kpi={"cls": "binary_accuracy", "multi": "accuracy"}, gamma=1.0, alpha=0.5)
    b.set_task_names(["cls", "multi", "reg"])
    b.build(3)
    y_true = {
        "cls": np.array([[1.0], [0.0], [1.0], [0.0]]),
        "multi": np.array([2, 0, 1, 1]),
        "reg": np.zeros((4, 1)),
    }
    y_pred = {
        "cls": np.array([[0.9], [0.6], [0.2], [0.1]]),  # right, wrong, wrong, right
        "multi": np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0.0]]),  # 3 right of 4
        "reg": np.zeros((4, 1)),
    }
    masks = {
        "cls": np.array([1.0, 1.0, 1.0, 0.0]),  # the last example has no label
        "multi": np.ones(4),
        "reg": np.ones(4),
    }
    losses = np.array([0.7, 0.4, 1.5])
    b.observe(y_true, y_pred, masks)
    k1 = np.array([1 / 3, 3 / 4, np.exp(-1.5)])
    np.testing.assert_allclose(b.aggregate(None, losses).weights, _focal(k1, 1.0), rtol=1e-5)

    # A batch without labels for `cls` keeps its average; `multi` is all right.
    masks["cls"] = np.zeros(4)
    y_pred["multi"] = np.eye(3)[y_true["multi"]]
    b.observe(y_true, y_pred, masks)
    k2 = np.array([k1[0], 0.5 * 1.0 + 0.5 * k1[1], 0.5 * np.exp(-1.0) + 0.5 * k1[2]])
    np.testing.assert_allclose(
        b.aggregate(None, [0.7, 0.4, 1.0]).weights, _focal(k2, 1.0), rtol=1e-5
    )
    # Without a new `observe`, the next step falls back to exp(-L) for every task.
    k3 = 0.5 * np.exp(-np.array([1.0, 2.0, 1.0])) + 0.5 * k2
    np.testing.assert_allclose(
        b.aggregate(None, [1.0, 2.0, 1.0]).weights, _focal(k3, 1.0), rtol=1e-5
    )


def test_kpi_metrics_inside_tf_function():
    b = DTP(kpi="sparse_categorical_accuracy", alpha=1.0, gamma=0.0)
    b.set_task_names(["a"])
    b.build(1)

    @tf.function
    def step(y, p, m):
        b.observe({"a": y}, {"a": p}, {"a": m})
        return b.aggregate(None, tf.constant([1.0])).weights

    y = tf.constant([[0], [1], [1], [2]])
    p = tf.constant([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.0, 0.1, 0.9]])
    np.testing.assert_allclose(step(y, p, tf.ones(4)), [-np.log(0.75)], rtol=1e-5)
    b2 = DTP(kpi="categorical_accuracy", alpha=1.0, gamma=0.0)
    b2.set_task_names(["a"])
    b2.observe({"a": np.eye(3)[[0, 0, 1, 2]]}, {"a": p.numpy()}, None)
    np.testing.assert_allclose(b2.aggregate(None, [1.0]).weights, [-np.log(0.5)], rtol=1e-5)


def test_extreme_kpis_and_losses_are_finite():
    b = DTP()
    for losses in ([0.0, 1e6], [1e-8, 0.0], [1e6, 1e-8]):
        w = np.asarray(b.aggregate(None, losses).weights)
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
    # k clipped to [1e-4, 1 - 1e-4]: a perfect KPI gives a tiny, non-zero weight
    # (a loss of exactly 0 would mean no labels).
    np.testing.assert_allclose(
        DTP(gamma=1.0).aggregate(None, [1e-12]).weights, _focal(1.0, 1.0), rtol=1e-3
    )


def test_config_and_validation():
    b = DTP(kpi={"a": "accuracy"}, gamma=1.0, alpha=0.2, epsilon=1e-3)
    again = balancers.get(balancers.serialize(b))
    assert isinstance(again, DTP) and again.get_config() == b.get_config()
    with pytest.raises(ValueError, match="Received: kpi='auc'"):
        DTP(kpi="auc")
    with pytest.raises(ValueError, match="Received: alpha=0"):
        DTP(alpha=0)
    with pytest.raises(ValueError, match="Received: gamma=-1"):
        DTP(gamma=-1)
    with pytest.raises(ValueError, match=r"unknown tasks \['b'\]"):
        DTP(kpi={"b": "accuracy"}).set_task_names(["a"])


def test_default_gamma_and_alpha():
    # gamma = 2 and alpha = 0.1: k2 = 0.1 exp(-L2) + 0.9 exp(-L1).
    b = DTP()
    b.aggregate(None, [0.5, 2.0])
    k = 0.1 * np.exp(-np.array([1.0, 0.1])) + 0.9 * np.exp(-np.array([0.5, 2.0]))
    np.testing.assert_allclose(b.aggregate(None, [1.0, 0.1]).weights, _focal(k, 2.0), rtol=1e-5)


@pytest.mark.parametrize("kpi", [None, {"a": "binary_accuracy", "b": None}])
def test_a_batch_without_labels_leaves_the_loss_kpi_alone(kpi):
    # A task without labels has loss exactly 0; exp(-0) = 1 averaged in made
    # it look mastered (weight 0.0085 instead of 2.07 below).
    b = DTP(kpi=kpi, gamma=1.0, alpha=0.1)
    b.set_task_names(["a", "b"])
    y = {t: np.ones((4, 1), "float32") for t in "ab"}
    p = {t: np.full((4, 1), 0.9, "float32") for t in "ab"}
    b.observe(y, p, {"a": np.ones(4), "b": np.zeros(4)})
    first = b.aggregate(None, np.array([np.log(2.0), 0.0])).weights
    assert float(first[1]) == 1.0  # no KPI yet for task b
    if kpi is not None:
        b.observe(y, p, None)
    weights = b.aggregate(None, np.array([np.log(2.0), np.log(10.0)])).weights
    np.testing.assert_allclose(weights[1], _focal(0.1, 1.0), rtol=1e-5)


def test_a_task_without_labels_yet_has_weight_one():
    # No KPI before the first labelled batch: weight 1, not the focal weight
    # of the zero-initialised average (-(1 - 1e-4)^2 log(1e-4) = 9.2).
    b = DTP(kpi="binary_accuracy", gamma=1.0)
    b.set_task_names(["a", "b"])
    y = np.array([[1.0], [0.0]])
    p = np.array([[0.9], [0.9]])  # one right of two
    b.observe({"a": y, "b": y}, {"a": p, "b": p}, {"a": np.zeros(2), "b": np.ones(2)})
    np.testing.assert_allclose(b.aggregate(None, [1.0, 1.0]).weights, [1.0, _focal(0.5, 1.0)])


def test_accuracy_with_one_hot_labels_is_categorical():
    b = DTP(kpi="accuracy", alpha=1.0, gamma=0.0)
    b.set_task_names(["a"])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    b.observe({"a": np.eye(3)[[0, 1, 0, 2]]}, {"a": p}, None)  # 2 right of 4
    np.testing.assert_allclose(b.aggregate(None, [1.0]).weights, [-np.log(0.5)], rtol=1e-5)


def test_binary_accuracy_thresholds_soft_labels_at_one_half():
    # Smoothed labels 0.9 / 0.1 are positives / negatives.
    b = DTP(kpi="binary_accuracy", alpha=1.0, gamma=0.0)
    b.set_task_names(["a"])
    y = np.array([[0.9], [0.1], [0.1], [0.9]])
    p = np.array([[0.8], [0.2], [0.3], [0.4]])  # right, right, right, wrong
    b.observe({"a": y}, {"a": p}, None)
    np.testing.assert_allclose(b.aggregate(None, [1.0]).weights, [-np.log(0.75)], rtol=1e-5)


def test_logs_report_each_task_average():
    b = DTP()
    b.set_task_names(["a", "b"])
    b.aggregate(None, [0.5, 2.0])
    logs = b.logs()
    np.testing.assert_allclose([logs["a_kpi"], logs["b_kpi"]], np.exp([-0.5, -2.0]), rtol=1e-6)


def test_binary_accuracy_with_one_dimensional_labels_and_predictions():
    # Labels (batch,) as Keras users pass them, predictions (batch,) or
    # (batch, 1): compared per example, not broadcast to (batch, batch).
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.9, 0.4, 0.3, 0.2])  # right, right, wrong, right
    for kpi in ("accuracy", "binary_accuracy"):
        for pred in (p, p[:, None]):
            b = DTP(kpi=kpi, alpha=1.0, gamma=0.0)
            b.set_task_names(["a"])
            b.observe({"a": y}, {"a": pred}, None)
            np.testing.assert_allclose(b.aggregate(None, [1.0]).weights, [-np.log(0.75)], rtol=1e-5)
