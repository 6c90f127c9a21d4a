"""Every way Keras takes a loss, through compile, a step, the compile config and
`.keras` saving, against plain Keras; the `callbacks` forms `fit` takes; where
`skipped_steps` is logged."""

import contextlib
import io

import keras
import numpy as np
import pytest

import keras_mtl
from tests.models.helpers import build, data

LOSS = {"task_1": "mse", "task_2": "mse"}


@keras.saving.register_keras_serializable(package="keras_mtl_tests")
def _registered_squared_error(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="keras_mtl_tests")
class _RegisteredAbsoluteError(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)


def _identifiers():
    """`{task: (loss identifier, output units, output activation)}`."""
    ignore = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    return {
        "alias": ("mse", 1, None),
        "binary": ("binary_crossentropy", 1, "sigmoid"),
        "sparse": ("sparse_categorical_crossentropy", 3, "softmax"),
        "class_name": ("MeanAbsoluteError", 1, None),
        "object": (keras.losses.Huber(), 1, None),
        "by_weight": (keras.losses.MeanSquaredError(reduction="mean_with_sample_weight"), 1, None),
        "function": (_registered_squared_error, 1, None),
        "custom": (_RegisteredAbsoluteError(), 1, None),
        "got": (keras.losses.get("mae"), 1, None),
        "full_dict": (keras.saving.serialize_keras_object(keras.losses.LogCosh()), 1, None),
        "short_dict": ({"class_name": "MeanSquaredLogarithmicError"}, 1, None),
        "ignored_dict": (keras.saving.serialize_keras_object(ignore), 3, None),
    }


def _labels(x):
    rng = np.random.default_rng(4)
    classes = np.argmax(x[:, :3], axis=1).astype("int32")
    ignored = np.where(rng.uniform(size=len(x)) < 0.3, -1, classes).astype("int32")
    return {
        "binary": (x[:, :1] > 0).astype("float32"),
        "sparse": classes,
        "short_dict": np.abs(x[:, 1:2]),  # a logarithmic error wants positive labels
        "ignored_dict": ignored,
    }


def _model(identifiers, cls=keras_mtl.MultiTaskModel):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh", name="trunk")(inputs)
    outputs = {
        task: keras.layers.Dense(units, activation=activation, name=task)(h)
        for task, (_, units, activation) in identifiers.items()
    }
    return cls(inputs=inputs, outputs=outputs)


def _close(got, expected, keys):
    for key in keys:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_every_loss_identifier_trains_saves_and_reloads_as_plain_keras(tmp_path):
    x, _ = data(n=32)
    identifiers = _identifiers()
    labels = _labels(x)
    y = {task: labels.get(task, x[:, :1] * 2.0) for task in identifiers}
    loss = {task: identifier for task, (identifier, _, _) in identifiers.items()}
    keys = [f"{task}_loss" for task in identifiers]

    # Plain Keras reads a dict in `loss` as a structure: it gets the loss objects.
    plain = _model(identifiers, keras.Model)
    plain.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss={t: keras.losses.get(v) if isinstance(v, dict) else v for t, v in loss.items()},
    )
    ours = _model(identifiers)
    ours.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, balancer="ew")
    expected = plain.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    _close(ours.evaluate(x, y, batch_size=32, verbose=0, return_dict=True), expected, keys)
    # "ew" sums the task losses, as Keras does.
    for model in (plain, ours):
        model.fit(x, y, batch_size=32, verbose=0)
    for a, b in zip(plain.trainable_variables, ours.trainable_variables, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)

    trained = ours.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    config = ours.get_compile_config()
    assert config["loss"]["short_dict"] == loss["short_dict"]
    fresh = _model(identifiers)
    fresh.compile_from_config(config)
    fresh.set_weights(ours.get_weights())
    _close(fresh.evaluate(x, y, batch_size=32, verbose=0, return_dict=True), trained, keys)
    assert fresh.get_compile_config()["loss"] == config["loss"]

    ours.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    _close(loaded.evaluate(x, y, batch_size=32, verbose=0, return_dict=True), trained, keys)
    loaded.fit(x, y, batch_size=32, verbose=0)
    uncompiled = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    uncompiled.compile(optimizer="sgd", loss=loss)  # and a recompile
    _close(uncompiled.evaluate(x, y, batch_size=32, verbose=0, return_dict=True), trained, keys)


@pytest.mark.parametrize(
    "identifier",
    [
        {"module": "keras.losses", "class_name": "Huber", "config": {"delta": 0.1}},
        {"class_name": "Huber", "config": {"delta": 0.1}},
    ],
    ids=["full", "short"],
)
def test_a_config_dict_loss_is_saved_as_given_and_reloads_with_all_its_arguments(
    tmp_path, identifier
):
    # It was saved as the loss object it describes, whose `get_config` may
    # leave arguments out (Keras's Huber drops `delta`): the reloaded model
    # trained with delta=1. Saved as given, the short form is found again by
    # `keras.losses.deserialize`.
    x, y = data(n=32)
    y = {"task_1": y["task_1"] * 5.0, "task_2": y["task_2"]}
    model = build()
    model.compile(optimizer="sgd", loss={"task_1": identifier, "task_2": "mse"})
    expected = model.evaluate(x, y, verbose=0, return_dict=True)
    for name in ("m.keras", "again.keras"):  # saved again after loading
        model.save(tmp_path / name)
        model = keras.saving.load_model(tmp_path / name)
        got = model.evaluate(x, y, verbose=0, return_dict=True)
        assert got["task_1_loss"] == pytest.approx(expected["task_1_loss"], rel=1e-6), name
    assert model.get_compile_config()["loss"]["task_1"] == identifier


# ----------------------------------------------------------------- callbacks
class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


class _Fail(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        raise RuntimeError("failed in fit")


def test_fit_takes_every_callbacks_form_and_its_hook_leaves_a_callback_list():
    x, y = data(n=32)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer="dwa")
    fit = dict(batch_size=16, verbose=0)
    for callbacks in (None, [], (_Epochs(),), _Epochs(), [[_Epochs()], (_Epochs(),)]):
        assert model.fit(x, y, epochs=2, callbacks=callbacks, **fit).epoch == [0, 1]
        assert float(model.balancer.epoch) == 1.0

    seen = _Epochs()
    callbacks = keras.callbacks.CallbackList(
        [seen], add_history=True, add_progbar=True, model=model, verbose=2, epochs=2, steps=2
    )
    given = list(callbacks.callbacks)
    completed = float(model.balancer.completed_epochs)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        for _ in range(2):  # reused: the hook joins it for one call at a time
            history = model.fit(x, y, epochs=2, callbacks=callbacks, **fit)
            assert callbacks.callbacks == given
    assert history is callbacks._history and history.epoch == [0, 1]
    assert seen.epochs == [0, 1, 0, 1] and "task_1_weight" in out.getvalue()
    # DWA was told of each of the four epochs (each closes the one before).
    assert float(model.balancer.completed_epochs) == completed + 4.0

    failing = keras.callbacks.CallbackList([_Fail()], model=model)
    with pytest.raises(RuntimeError, match="failed in fit"):
        model.fit(x, y, callbacks=failing, **fit)
    assert [type(c) for c in failing.callbacks] == [_Fail]


# -------------------------------------------------------------- skipped_steps
def test_skipped_steps_is_logged_in_training_logs_only():
    x, y = data(n=32)
    y_bad = {"task_1": y["task_1"], "task_2": y["task_2"].copy()}
    y_bad["task_2"][:16] = np.inf  # the first of two batches is skipped
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, nonfinite="skip")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        history = model.fit(
            x, y_bad, batch_size=16, shuffle=False, verbose=2, validation_data=(x, y)
        ).history
    assert history["skipped_steps"] == [1.0] and "val_skipped_steps" not in history
    assert "skipped_steps: 1.0000" in out.getvalue()
    assert "skipped_steps" not in model.evaluate(x, y, verbose=0, return_dict=True)
    logs = model.train_on_batch(x[:16], {k: v[:16] for k, v in y_bad.items()}, return_dict=True)
    assert logs["skipped_steps"] == 2.0

    model = build()
    model.compile(optimizer="sgd", loss=LOSS)  # nonfinite="raise"
    assert "skipped_steps" not in model.fit(x, y, batch_size=16, verbose=0).history
    assert "skipped_steps" not in model.train_on_batch(x, y, return_dict=True)
