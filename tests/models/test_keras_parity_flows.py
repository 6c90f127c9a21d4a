"""User flows of `MultiTaskModel` beyond the other model tests, checked against plain Keras."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from tests.models.helpers import TASKS, NormalizedEMA, build, data

LOSS = {"task_1": "mse", "task_2": "mse"}


def _weights(model):
    return [np.array(v) for v in model.trainable_variables]


def _plain_and_ours(**kwargs):
    """`build()` as plain Keras and as a MultiTaskModel, with the same weights."""
    plain = build(model_cls=keras.Model, **kwargs)
    ours = build(**kwargs)
    ours.set_weights(plain.get_weights())
    return plain, ours


def _assert_same_weights(plain, ours, atol=1e-6):
    for a, b in zip(plain.trainable_variables, ours.trainable_variables, strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=atol)


class _CountingEMA(NormalizedEMA):
    """`NormalizedEMA` that logs a step counter kept in a state variable."""

    def build(self, num_tasks):
        super().build(num_tasks)
        self.count = self.add_state("count", (), initializer="zeros")

    def compute(self, jacobian, losses, representation=None):
        self.count.assign_add(1.0)
        return super().compute(jacobian, losses, representation)

    def logs(self):
        return {"ema_steps": self.count.value}  # a variable on the TF backend


def test_run_eagerly_logs_state_variables_and_takes_the_graph_step():
    # Eagerly, Keras cannot pass a variable out of the step: `skipped_steps`
    # and balancer logs read from state (Nash-MTL's solver failures) crashed
    # `fit` with "'NoneType' object has no attribute 'is_set'".
    x, y = data(n=32)
    results = []
    for run_eagerly in (True, False):
        model = build()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=LOSS,
            balancer=_CountingEMA(),
            nonfinite="skip",
            run_eagerly=run_eagerly,
        )
        history = model.fit(x, y, batch_size=16, shuffle=False, verbose=0).history
        assert history["skipped_steps"] == [0.0]
        assert history["ema_steps"] == [2.0]
        results.append((_weights(model), history["loss"]))
    (eager, eager_loss), (graph, graph_loss) = results
    for a, b in zip(eager, graph, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert eager_loss == pytest.approx(graph_loss, rel=1e-5)


def test_train_on_batch_refuses_class_weight_as_fit_does():
    # Keras's own train_on_batch failed with "IndexError: tuple index out of range".
    x, y = data(n=16)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(
        ValueError, match=r"`class_weight` is not supported.*class_weight=\{0: 2.0\}"
    ):
        model.train_on_batch(x, y, class_weight={0: 2.0})


def test_on_batch_methods_equal_plain_keras_with_summed_losses():
    x, y = data(n=32)
    plain, ours = _plain_and_ours()
    for model in (plain, ours):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    for _ in range(2):
        expected = plain.train_on_batch(x, y, return_dict=True)
        got = ours.train_on_batch(x, y, return_dict=True)
        for key in ("loss", "task_1_loss", "task_2_loss"):
            assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    _assert_same_weights(plain, ours)
    expected = plain.test_on_batch(x, y, return_dict=True)
    got = ours.test_on_batch(x, y, return_dict=True)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    for name in TASKS:
        np.testing.assert_allclose(
            ours.predict_on_batch(x)[name], plain.predict_on_batch(x)[name], rtol=1e-6
        )


def test_loss_weights_and_weighted_metrics_are_refused_and_auto_scale_loss_is_passed_on():
    # All three were a bare "unexpected keyword argument" TypeError.
    model = build()
    with pytest.raises(
        ValueError,
        match=r"`loss_weights` is not supported.*StaticWeighting\(\{'task_1': 2.0\}\)",
    ):
        model.compile(optimizer="sgd", loss=LOSS, loss_weights={"task_1": 2.0})
    with pytest.raises(ValueError, match=r"`weighted_metrics` is not supported.*metrics=\{task"):
        model.compile(optimizer="sgd", loss=LOSS, weighted_metrics={"task_1": ["mae"]})
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build()
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer="sgd", loss=LOSS, auto_scale_loss=False)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_compile_config()["auto_scale_loss"] is False
    model.compile(optimizer="sgd", loss=LOSS)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


class _BinaryCrossentropyWithTfOps(keras.losses.Loss):
    def call(self, y_true, y_pred):
        p = tf.sigmoid(y_pred)
        return -tf.reduce_mean(
            y_true * tf.math.log(p + 1e-7) + (1.0 - y_true) * tf.math.log(1.0 - p + 1e-7), -1
        )


def _squared_error_with_tf_ops(y_true, y_pred):
    return tf.reduce_mean(tf.square(y_true - y_pred), -1)


def test_custom_losses_get_integer_labels_as_floats_as_in_keras():
    # Keras converts labels to the loss's dtype before `Loss.call` (and to
    # floatx for loss functions); a loss written with tf ops failed on
    # integer labels: "Input 'y' of 'Mul' Op has type float32 that does not
    # match type int32".
    x, _ = data(n=32)
    y = {
        "task_1": (x[:, :1] > 0).astype("int32"),
        "task_2": np.round(x[:, 1:2] * 3).astype("int64"),
    }
    loss = {"task_1": _BinaryCrossentropyWithTfOps(), "task_2": _squared_error_with_tf_ops}
    plain, ours = _plain_and_ours()
    for model in (plain, ours):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    expected = plain.fit(x, y, batch_size=16, shuffle=False, verbose=0).history
    got = ours.fit(x, y, batch_size=16, shuffle=False, verbose=0).history
    _assert_same_weights(plain, ours)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_a_sum_reduction_is_refused_and_mean_with_sample_weight_divides_by_the_weights():
    # Both reductions were ignored without a word: "sum" trained with the
    # mean (a step batch-size times smaller than Keras's), and
    # "mean_with_sample_weight" divided by the number of labelled examples.
    with pytest.raises(ValueError, match=r"reduction='sum' for task 'task_2', expected a mean"):
        build().compile(
            optimizer="sgd",
            loss={"task_1": "mse", "task_2": keras.losses.MeanSquaredError(reduction="sum")},
        )
    x, y = data(n=32)
    weight = np.linspace(0.5, 2.0, 32).astype("float32")
    weight[::4] = 0.0  # unlabelled
    sample_weight = {"task_1": weight, "task_2": np.ones(32, "float32")}

    def loss():
        return {
            "task_1": keras.losses.MeanSquaredError(reduction="mean_with_sample_weight"),
            "task_2": "mse",
        }

    plain, ours = _plain_and_ours()
    for model in (plain, ours):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss())
    expected = plain.evaluate(x, y, sample_weight=sample_weight, verbose=0, return_dict=True)
    got = ours.evaluate(x, y, sample_weight=sample_weight, verbose=0, return_dict=True)
    for key in ("loss", "task_1_loss", "task_2_loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    for model in (plain, ours):
        model.fit(x, y, sample_weight=sample_weight, batch_size=32, verbose=0)
    _assert_same_weights(plain, ours)


def _with_an_embedding_output(cls):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    h = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(inputs)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    outputs["embedding"] = h
    return cls(inputs=inputs, outputs=outputs)


def test_an_output_with_a_none_loss_is_refused_naming_it():
    # Keras leaves such an output out of training; the contract makes every output a task.
    model = _with_an_embedding_output(keras_mtl.MultiTaskModel)
    with pytest.raises(ValueError, match="loss None for task 'embedding'.*second `keras.Model`"):
        model.compile(optimizer="sgd", loss={**LOSS, "embedding": None})


def test_recompiling_with_another_balancer_resets_the_weights_evaluate_uses():
    # After DB-MTL, `evaluate` under "ew" weighed the tasks with DB-MTL's last
    # weights (and logged them as the task weights).
    x, y = data(n=32)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer="db_mtl")
    model.fit(x, y, batch_size=16, verbose=0)
    assert not np.allclose(np.array(model._last_task_weights), 1.0)
    balancer = keras_mtl.balancers.get("ew")
    model.compile(optimizer="sgd", loss=LOSS, balancer=balancer)
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    assert (result["task_1_weight"], result["task_2_weight"]) == (1.0, 1.0)
    assert result["loss"] == pytest.approx(result["task_1_loss"] + result["task_2_loss"])
    # The same balancer object keeps its weights.
    ema = NormalizedEMA()
    model.compile(optimizer="sgd", loss=LOSS, balancer=ema)
    model.fit(x, y, batch_size=16, verbose=0)
    last = np.array(model._last_task_weights)
    model.compile(optimizer="adam", loss=LOSS, balancer=ema)
    np.testing.assert_array_equal(np.array(model._last_task_weights), last)


def test_a_frozen_trunk_with_a_gradient_balancer_names_the_frozen_layer():
    x, y = data(n=16)
    model = build()
    model.get_layer("trunk").trainable = False
    model.compile(optimizer="sgd", loss=LOSS, balancer="pcgrad")
    with pytest.raises(
        ValueError, match=r"no trainable variable.*frozen layers \(trainable=False\).*\['trunk'\]"
    ):
        model.fit(x, y, verbose=0)
    # A loss-weighting balancer trains the towers, as plain Keras does.
    plain, ours = _plain_and_ours()
    for model in (plain, ours):
        model.get_layer("trunk").trainable = False
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    _assert_same_weights(plain, ours)


def test_a_dataset_of_dicts_with_missing_labels_takes_the_steps_of_arrays():
    # (x, y, sample_weight) with a dict of weights that leaves out a task, NaN
    # labels, and a batch without any label of task_2.
    x, y = data(n=48)
    y["task_2"] = y["task_2"].copy()
    y["task_2"][:16] = np.nan
    y["task_2"][20:24] = np.nan
    weight = {"task_1": np.where(np.arange(48) % 3 == 0, 0.0, 1.0).astype("float32")}
    results = []
    for kind in ("arrays", "dataset"):
        model = build()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, balancer="upgrad")
        if kind == "arrays":
            fit = model.fit(x, y, sample_weight=weight, batch_size=16, shuffle=False, verbose=0)
        else:
            dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(16)
            fit = model.fit(dataset, validation_data=dataset, shuffle=False, verbose=0)
        results.append((_weights(model), fit.history))
    (arrays, h_arrays), (dataset, h_dataset) = results
    for a, b in zip(arrays, dataset, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for key in ("loss", "task_1_loss", "task_2_loss", "task_2_weight"):
        assert h_dataset[key] == pytest.approx(h_arrays[key], rel=1e-6), key
    assert np.isfinite(h_dataset["val_task_2_loss"][0])


def test_validation_split_equals_plain_keras():
    x, y = data(n=40)
    plain, ours = _plain_and_ours()
    histories = []
    for model in (plain, ours):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        fit = model.fit(x, y, validation_split=0.2, batch_size=8, shuffle=False, verbose=0)
        histories.append(fit.history)
    _assert_same_weights(plain, ours)
    for key in ("loss", "val_loss", "val_task_1_loss", "val_task_2_loss"):
        assert histories[1][key] == pytest.approx(histories[0][key], rel=1e-5), key


@pytest.mark.parametrize("balancer", ["dwa", "db_mtl"])
def test_run_eagerly_skips_or_refuses_a_nonfinite_step_as_graph_mode_does(balancer):
    # Eagerly, `aggregate` of a balancer with state refuses non-finite inputs
    # when called on its own; in the model's step `nonfinite` decides instead.
    x, y = data(n=32)
    y = {k: v.copy() for k, v in y.items()}
    y["task_1"][16:] = np.inf  # the second batch has an infinite loss
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer=balancer, nonfinite="skip", run_eagerly=True)
    model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    assert int(model._skipped_steps.numpy()) == 1
    states = [np.array(v) for v in model.balancer.non_trainable_variables]
    assert all(np.all(np.isfinite(s)) for s in states)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer=balancer, run_eagerly=True)
    with pytest.raises(Exception, match="Non-finite task loss"):
        model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
