"""`MultiTaskModel` edge cases: clear errors for what users get wrong, and behaviour on less
common inputs."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_mtl
from tests.models.helpers import NormalizedEMA, build, data, json_report

LOSS = {"task_1": "mse", "task_2": "mse"}


def _vars(model):
    return [np.asarray(v) for v in model.trainable_variables]


class TwoHeads(keras_mtl.MultiTaskModel):
    """A subclassed two-task model; `dict_outputs=False` returns a bare tensor."""

    def __init__(self, dict_outputs=True):
        super().__init__()
        self.dict_outputs = dict_outputs
        self.head = keras.layers.Dense(1)

    def call(self, x):
        out = self.head(x)
        return {"task_1": out, "task_2": out} if self.dict_outputs else out


# ------------------------------------------------------------------ construction and compile
def test_a_subclass_with_call_refuses_functional_arguments():
    class WithCall(keras_mtl.MultiTaskModel):
        def call(self, x):
            return {"a": x}

    inputs = keras.Input((2,))
    with pytest.raises(TypeError, match=r"`WithCall` subclasses MultiTaskModel.*`inputs`"):
        WithCall(inputs=inputs, outputs={"a": keras.layers.Dense(1)(inputs)})


def test_loss_none_is_refused_naming_the_tasks():
    model = build()
    with pytest.raises(ValueError, match=r"`loss`.*\['task_1', 'task_2'\]. Received: loss=None"):
        model.compile(optimizer="sgd", loss=None)


def test_a_subclassed_model_needs_a_loss_dict_for_its_tasks():
    keras.utils.set_random_seed(0)
    with pytest.raises(ValueError, match=r"needs `loss` as a dict.*Received: loss='mse'"):
        TwoHeads().compile(optimizer="sgd", loss="mse")


def test_metrics_as_a_list_are_refused():
    model = build()
    with pytest.raises(ValueError, match=r"`metrics` to be a dict.*Received: metrics of type list"):
        model.compile(optimizer="sgd", loss=LOSS, metrics=["mae"])


# ----------------------------------------------------------------------------- the step
def test_a_model_returning_a_tensor_is_refused_at_the_first_step():
    keras.utils.set_random_seed(0)
    model = TwoHeads(dict_outputs=False)
    model.compile(optimizer="sgd", loss=LOSS)
    x, y = data(n=8)
    with pytest.raises(ValueError, match=r"return a dict.*Received: outputs of type \w*Tensor"):
        model.fit(x, y, verbose=0)


def test_a_dataset_sample_weight_with_an_unknown_task_is_named():
    # `fit` checks a `sample_weight` argument itself; a dataset's reaches the step as it is.
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    x, y = data(n=8)
    weights = {"task_1": np.ones(8, "float32"), "task_3": np.ones(8, "float32")}
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8)
    with pytest.raises(ValueError, match=r"keys of `sample_weight`.*unknown: \['task_3'\]"):
        model.fit(dataset, shuffle=False, verbose=0)


def test_dataset_labels_that_are_not_a_dict_are_refused():
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    x, y = data(n=8)
    dataset = tf.data.Dataset.from_tensor_slices((x, y["task_1"])).batch(8)
    with pytest.raises(ValueError, match=r"`y` to be a dict.*Received: y of type \w*Tensor"):
        model.evaluate(dataset, verbose=0)


def test_a_loss_returning_a_scalar_is_refused_naming_it():
    def batch_mean(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred))

    model = build()
    model.compile(optimizer="sgd", loss={"task_1": batch_mean, "task_2": "mse"})
    x, y = data(n=8)
    with pytest.raises(
        ValueError,
        match=r"task 'task_1' to return per-example losses.*loss=\{'task_1': <function "
        r".*batch_mean.*returned a scalar",
    ):
        model.fit(x, y, verbose=0)


def test_fit_before_compile_says_to_compile():
    model = build()
    x, y = data(n=8)
    with pytest.raises(RuntimeError, match=r"Call `compile\(\)`"):
        model.fit(x, y, verbose=0)


def test_a_sample_weight_of_shape_batch_by_one_weighs_as_one_of_shape_batch():
    x, y = data(n=16)
    weight = np.linspace(0.0, 2.0, 16, dtype="float32")  # a 0 (unlabelled) and unequal weights

    def trained(sample_weight):
        model = build()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        model.fit(x, y, sample_weight=sample_weight, batch_size=16, shuffle=False, verbose=0)
        return _vars(model)

    flat = trained({"task_1": weight})
    column = trained({"task_1": weight[:, None]})
    for a, b in zip(column, flat, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The weights changed the step: the comparison above is not between two unweighted ones.
    unweighted = trained(None)
    assert max(np.max(np.abs(a - b)) for a, b in zip(flat, unweighted, strict=True)) > 1e-4


def test_ignore_class_with_labels_of_width_one_matches_keras():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    labels = np.argmax(x[:, :3], 1).astype("int32")[:, None]
    labels[rng.random(32) < 0.5] = -1
    y = {"c": labels, "b": (x[:, :1] > 0).astype("float32")}

    def classifier(cls):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((6,))
        h = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(inputs)
        outputs = {"c": keras.layers.Dense(3, name="c")(h), "b": keras.layers.Dense(1, name="b")(h)}
        model = cls(inputs=inputs, outputs=outputs)
        model.compile(
            optimizer="sgd",
            loss={
                "c": keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1),
                "b": keras.losses.BinaryCrossentropy(from_logits=True),
            },
        )
        return model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)

    expected, got = classifier(keras.Model), classifier(keras_mtl.MultiTaskModel)
    for key in ("c_loss", "b_loss", "loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key


def _unknown_rank_dataset(x, y):
    """`y["task_1"]` with a shape of unknown rank, as a generator without shapes gives."""

    def batches():
        yield x, y

    spec = (
        tf.TensorSpec((None, x.shape[1]), tf.float32),
        {"task_1": tf.TensorSpec(None, tf.float32), "task_2": tf.TensorSpec((None, 1), tf.float32)},
    )
    return tf.data.Dataset.from_generator(batches, output_signature=spec)


@pytest.mark.parametrize(
    "loss, message",
    [
        # The alias picks its loss from the ranks.
        ("crossentropy", r"loss 'crossentropy' of task 'task_1'.*known rank"),
        # Keras's losses squeeze or expand by the ranks; plain Keras fails without a task.
        ("mse", r"task 'task_1' to have shapes of known rank"),
    ],
)
def test_labels_of_unknown_rank_are_refused_naming_the_task(loss, message):
    model = build()
    model.compile(optimizer="sgd", loss={"task_1": loss, "task_2": "mse"})
    x, y = data(n=8)
    with pytest.raises(ValueError, match=message + r".*Received: .*<unknown>"):
        model.fit(_unknown_rank_dataset(x, y), shuffle=False, verbose=0)


# ------------------------------------------------------------------------------- saving
def test_a_compiled_models_file_loads_its_state_into_an_uncompiled_model(tmp_path):
    x, y = data(n=16)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer=NormalizedEMA(0.3))
    model.fit(x, y, batch_size=16, verbose=0)
    trained = np.asarray(model._last_task_weights)
    assert np.all(np.abs(trained - 1.0) > 1e-3), trained  # not the initial weights
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(np.asarray(loaded._last_task_weights), trained)
    # Compiled again, `evaluate` weighs the tasks by the loaded weights, as the original does.
    loaded.compile(optimizer="sgd", loss=LOSS, balancer=NormalizedEMA(0.3))
    expected = model.evaluate(x, y, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for key in ("loss", "task_1_weight", "task_2_weight"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_an_uncompiled_models_weights_load_into_a_compiled_model_keeping_its_state(tmp_path):
    source = build(seed=5)
    path = tmp_path / "u.weights.h5"
    source.save_weights(path)
    fixed = keras_mtl.balancers.StaticWeighting({"task_1": 0.3, "task_2": 2.0})
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer=fixed)
    model.load_weights(path)
    for a, b in zip(_vars(model), _vars(source), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.asarray(model._last_task_weights), [0.3, 2.0])


def test_a_loss_function_that_is_not_registered_fails_to_load_naming_it(tmp_path):
    def scaled_error(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred), axis=-1)

    model = build()
    model.compile(optimizer="sgd", loss={"task_1": scaled_error, "task_2": "mse"})
    path = tmp_path / "m.keras"
    model.save(path)
    # Keras's own message says how to register it, rather than "an invalid loss".
    with pytest.raises(TypeError, match=r"Could not locate function 'scaled_error'"):
        keras.saving.load_model(path)


def test_a_compile_config_holding_a_loss_object_is_refused_as_keras_refuses_it():
    # A config holds serialized losses; Keras's own `compile_from_config` refuses a live
    # object with this error, where the fallback for short-form dicts would accept it.
    def refusal(model_cls):
        model = build(model_cls=model_cls)
        model.compile(optimizer="sgd", loss=LOSS)
        config = model.get_compile_config()
        config["loss"] = {"task_1": keras.losses.Huber(), "task_2": "mse"}
        with pytest.raises(
            TypeError, match=r"Could not parse config: <LossFunctionWrapper"
        ) as info:
            build(model_cls=model_cls).compile_from_config(config)
        return str(info.value)

    assert refusal(None) == refusal(keras.Model)


# ------------------------------------------------------------------- jit_compile, CPU replicas
_JIT_UNDER_CPU_REPLICAS = """
import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras

from tests.models.helpers import build, data

LOSS = {"task_1": "mse", "task_2": "mse"}
x, y = data(n=16)
report = {}
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    model = build()
    try:
        model.compile(optimizer="sgd", loss=LOSS, jit_compile=True)
    except ValueError as error:
        report["refusal"] = str(error)
    model.compile(optimizer="sgd", loss=LOSS, jit_compile=True, run_eagerly=True)
    report["eager_jit"] = model.jit_compile
    model.compile(optimizer="sgd", loss=LOSS, jit_compile="auto")
    report["auto_loss"] = model.fit(x, y, batch_size=16, verbose=0).history["loss"][0]
    plain = build(model_cls=keras.Model)
    plain.compile(optimizer="sgd", loss=LOSS, jit_compile=True)
try:
    plain.fit(x, y, batch_size=16, verbose=0)
    report["plain_error"] = None
except tf.errors.InvalidArgumentError as error:
    report["plain_error"] = str(error)
with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
    single = build()
    single.compile(optimizer="sgd", loss=LOSS, jit_compile=True)
    report["one_replica_jit"] = single.jit_compile
print(json.dumps(report))
"""


def test_jit_compile_under_several_cpu_replicas_is_refused_at_compile():
    # Two logical CPUs must be configured before TensorFlow starts: a fresh process.
    report = json_report("-c", _JIT_UNDER_CPU_REPLICAS)
    refusal = report.get("refusal", "")
    assert "`jit_compile=True` is not supported" in refusal, report
    assert 'Pass jit_compile=False or "auto"' in refusal, refusal
    assert "Received: jit_compile=True with the replicas on" in refusal, refusal
    assert "device:CPU:0" in refusal and "device:CPU:1" in refusal, refusal
    # Not refused where XLA is off (Keras turns it off when eager) or with one replica.
    assert report["eager_jit"] is False, report
    assert np.isfinite(report["auto_loss"]), report
    assert report["one_replica_jit"] is True, report
    # Why: plain Keras fails there. A TensorFlow that fixes it must not break CI, but should
    # be seen: lift the refusal then.
    if report["plain_error"] is None:
        warnings.warn("TensorFlow now runs jit_compile=True on several CPU replicas", stacklevel=1)
    else:
        assert "located in device" in report["plain_error"], report["plain_error"]
