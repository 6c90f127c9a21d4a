"""Logged means with missing labels, label shapes, and fit's sample-weight forms."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.models.helpers import TASKS, build, data

LOSS = {"task_1": "mse", "task_2": "mse"}


def _labels_with_a_gap(n=64, labelled=33):
    x, y = data(n=n)
    y["task_2"] = y["task_2"].copy()
    y["task_2"][: n - labelled] = np.nan  # the first batches have no task_2 label
    return x, y


@pytest.mark.parametrize("batch_size", [64, 32, 16, 7])
def test_evaluate_averages_each_task_over_its_labelled_examples(batch_size):
    x, y = _labels_with_a_gap()
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    pred = model.predict(x, verbose=0)
    labelled = ~np.isnan(y["task_2"][:, 0])
    expected_2 = np.mean((pred["task_2"][labelled] - y["task_2"][labelled]) ** 2)
    expected_1 = np.mean((pred["task_1"] - y["task_1"]) ** 2)
    logs = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    assert logs["task_2_loss"] == pytest.approx(expected_2, rel=1e-5)
    assert logs["task_1_loss"] == pytest.approx(expected_1, rel=1e-5)
    # Weights 1 before training: `loss` is the sum of the task means.
    assert logs["loss"] == pytest.approx(expected_1 + expected_2, rel=1e-5)


def test_a_task_without_labels_in_a_batch_keeps_its_last_weight():
    # DB-MTL weighs a task by 1 / L_t: 1e8 where a batch has no label (L_t = 0).
    x, y = _labels_with_a_gap(n=64, labelled=16)  # only the last batch of 16 has them
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer="db_mtl")
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    # Logged and kept: the weight of the one step with task_2 labels.
    last = np.array(model._last_task_weights)
    assert 0.0 < last[1] < 1e3
    assert history["task_2_weight"] == [pytest.approx(last[1], rel=1e-6)]
    assert history["task_1_weight"][0] < 1e3
    # `evaluate` on fully labelled data uses those finite weights.
    y_full = {"task_1": y["task_1"], "task_2": np.ones_like(y["task_1"])}
    logs = model.evaluate(x, y_full, verbose=0, return_dict=True)
    assert logs["loss"] < 1e3

    # An epoch without any task_2 label: 0 in its logs, its last weight kept.
    y_none = {"task_1": y["task_1"], "task_2": np.full_like(y["task_2"], np.nan)}
    history = model.fit(x, y_none, batch_size=16, epochs=1, verbose=0).history
    assert history["task_2_weight"] == [0.0] and history["task_2_loss"] == [0.0]
    assert np.array(model._last_task_weights)[1] == last[1]


def test_an_epoch_of_skipped_steps_logs_a_nan_loss():
    x, y = data(n=32)
    y_bad = {"task_1": y["task_1"], "task_2": np.full_like(y["task_2"], np.inf)}
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, nonfinite="skip")
    history = model.fit(x, y_bad, batch_size=16, epochs=1, verbose=0).history
    assert history["skipped_steps"] == [2.0]
    assert np.isnan(history["loss"][0])  # not 0: nothing was learned
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


@pytest.mark.parametrize(
    "loss",
    ["binary_crossentropy", "hinge", "squared_hinge", "poisson", "kl_divergence", "mse"],
)
def test_labels_of_shape_batch_match_plain_keras_for_loss_names(loss):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    labels = (rng.random(32) > 0.5).astype("float32") * 0.8 + 0.1  # shape (32,)
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(4, activation="relu")(inputs)
    outputs = {name: keras.layers.Dense(1, activation="sigmoid", name=name)(h) for name in TASKS}
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)
    model.compile(optimizer="sgd", loss={name: loss for name in TASKS})
    plain = keras.Model(inputs, outputs)
    plain.compile(optimizer="sgd", loss={name: loss for name in TASKS})
    y = {name: labels for name in TASKS}
    ours = model.evaluate(x, y, verbose=0, return_dict=True)
    theirs = plain.evaluate(x, y, verbose=0, return_dict=True)
    for name in TASKS:
        assert ours[f"{name}_loss"] == pytest.approx(theirs[f"{name}_loss"], rel=1e-5)


def test_validation_data_may_give_a_partial_sample_weight_dict():
    x, y = data(n=32)
    w_2 = np.r_[np.zeros(16), np.ones(16)].astype("float32")
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    history = model.fit(x, y, epochs=1, verbose=0, validation_data=(x, y, {"task_2": w_2})).history
    logs = model.evaluate(x, y, sample_weight={"task_2": w_2}, verbose=0, return_dict=True)
    assert history["val_task_2_loss"] == [pytest.approx(logs["task_2_loss"], rel=1e-6)]
    pred = model.predict(x[16:], verbose=0)["task_2"]
    assert logs["task_2_loss"] == pytest.approx(np.mean((pred - y["task_2"][16:]) ** 2), rel=1e-5)


def test_evaluate_as_a_list_holds_each_log_once_loss_first():
    x, y = data(n=32)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, metrics={"task_1": ["mae"]})
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    values = model.evaluate(x, y, verbose=0)
    assert len(model.metrics_names) == len(set(model.metrics_names))
    # Keras's order for metrics that report several values: `loss`, then by name.
    assert values == pytest.approx([logs["loss"]] + [logs[k] for k in sorted(logs) if k != "loss"])


def test_metric_objects_are_logged_once_with_their_task_prefix():
    # The compile config held the objects in a tracked dict: Keras listed them
    # in `metrics` again and logged `auc` (task_2's) next to the prefixed ones.
    x, y = data(n=32)
    model = build()
    metrics = {t: [keras.metrics.MeanAbsoluteError(name="mae")] for t in TASKS}
    model.compile(optimizer="sgd", loss=LOSS, metrics=metrics)
    history = model.fit(x, y, batch_size=16, verbose=0, validation_split=0.5).history
    assert sorted(k for k in history if "mae" in k) == [
        "task_1_mae",
        "task_2_mae",
        "val_task_1_mae",
        "val_task_2_mae",
    ]
    assert model.metrics_names == ["loss", "compile_metrics", "task_weights"]


def _classifier(cls, d=6):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((d,))
    h = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(inputs)
    outputs = {"c": keras.layers.Dense(3, name="c")(h), "b": keras.layers.Dense(1, name="b")(h)}
    return cls(inputs=inputs, outputs=outputs)


def test_ignore_class_marks_missing_integer_labels_as_in_keras():
    # The loss is 0 at ignored labels; averaged over the whole batch, c_loss
    # was 0.625 of Keras's (the labelled share) and the step differed.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    c = np.argmax(x[:, :3], 1).astype("int32")
    c[rng.random(64) < 0.5] = -1
    y = {"c": c, "b": (x[:, 0] > 0).astype("float32")}

    def losses():
        return {
            "c": keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1),
            "b": keras.losses.BinaryCrossentropy(from_logits=True),
        }

    plain, ours = _classifier(keras.Model), _classifier(keras_mtl.MultiTaskModel)
    for model in (plain, ours):
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=losses())
    expected = plain.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    got = ours.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    for key in ("c_loss", "b_loss", "loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    plain.fit(x, y, batch_size=64, verbose=0)
    ours.fit(x, y, batch_size=64, verbose=0)
    for a, b in zip(plain.trainable_variables, ours.trainable_variables, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_ignore_class_per_position_averages_each_example_over_its_labels():
    # Per-position labels (a segmentation map): each example's loss is the
    # mean over its labelled positions; an example with none is unlabelled.
    inputs = keras.Input((4, 3))
    model = keras_mtl.MultiTaskModel(inputs, {"seg": keras.layers.Dense(3, name="seg")(inputs)})
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    model.compile(optimizer="sgd", loss={"seg": loss})
    x = np.random.default_rng(1).normal(size=(3, 4, 3)).astype("float32")
    labels = np.array([[0, 1, -1, 2], [-1, -1, -1, -1], [2, -1, -1, -1]], "int32")
    logits = model.predict(x, verbose=0)["seg"]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_example = [
        -np.mean([log_p[i, j, labels[i, j]] for j in range(4) if labels[i, j] >= 0]) for i in (0, 2)
    ]
    got = model.evaluate(x, {"seg": labels}, verbose=0, return_dict=True)
    assert got["seg_loss"] == pytest.approx(np.mean(per_example), rel=1e-5)


def test_evaluate_before_training_uses_fixed_weights_as_keras_loss_weights():
    # Before any step the last weights were 1: loss was the plain sum.
    x, y = data(n=32)
    plain = build(model_cls=keras.Model)
    ours = build()
    plain.compile(optimizer="sgd", loss=LOSS, loss_weights={"task_1": 0.3, "task_2": 2.0})
    ours.compile(
        optimizer="sgd",
        loss=LOSS,
        balancer=keras_mtl.balancers.StaticWeighting({"task_1": 0.3, "task_2": 2.0}),
    )
    expected = plain.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    got = ours.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert (got["task_1_weight"], got["task_2_weight"]) == pytest.approx((0.3, 2.0))
