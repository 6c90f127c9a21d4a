"""Keras flows beyond `fit` on arrays: resuming after an interruption
(`BackupAndRestore`, `ModelCheckpoint` + `load_weights`) and input pipelines
(`PyDataset`, generators, `tf.data`, validation options). Each is compared
numerically with the uninterrupted or array-input run, balancer state included."""

import os
import warnings
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from tests.models.helpers import build, data

LOSS = {"task_1": "mse", "task_2": "mse"}
BATCH = 16
N = 64  # 4 steps per epoch
EPOCHS = 3


def _model(balancer="ew", plain=False):
    model = build(model_cls=keras.Model if plain else None)
    if plain:
        # Keras sums the outputs' losses: what "ew" does.
        model.compile(optimizer="adam", loss=LOSS)
    else:
        model.compile(optimizer="adam", loss=LOSS, balancer=balancer)
    return model


def _state(model):
    """The values a resumed run must restore: weights (the model's own state and
    the balancer's included), optimizer variables, balancer variables and the
    balancer's random generators."""
    balancer = getattr(model, "balancer", None)
    return {
        "weights": [np.asarray(v.numpy()) for v in model.weights],
        "optimizer": [np.asarray(v.numpy()) for v in model.optimizer.variables],
        "balancer": [] if balancer is None else [np.asarray(v.numpy()) for v in balancer.variables],
        "seeds": []
        if balancer is None
        else [np.asarray(g.state.numpy()) for g in balancer._seed_generators],
    }


def _assert_same_state(got, expected):
    for key, values in expected.items():
        assert len(got[key]) == len(values), key
        for a, b in zip(got[key], values, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=key)


def _assert_same_logs(got, expected):
    assert sorted(got) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(got[key], values, rtol=1e-6, atol=1e-7, err_msg=key)


class _Interrupt(keras.callbacks.Callback):
    """Raises at the beginning of epoch `epoch`, or after its batch `batch`."""

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch
        if self.batch is None and epoch == self.epoch:
            raise RuntimeError("interrupted")

    def on_train_batch_end(self, batch, logs=None):
        if self.batch is not None and (self.current, batch) == (self.epoch, self.batch):
            raise RuntimeError("interrupted")


def _fit(model, x, y, **kwargs):
    return model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, **kwargs)


def _head(y, n):
    return {k: v[:n] for k, v in y.items()}


# ------------------------------------------------------------ fault tolerance
@pytest.mark.parametrize("balancer", ["db_mtl", "gradnorm", "dwa", "famo"])
def test_backup_and_restore_per_epoch_resumes_the_uninterrupted_run(tmp_path, balancer):
    # DB-MTL's moving averages, GradNorm's weights and initial losses, DWA's
    # epoch losses, FAMO's logits and Adam moments.
    x, y = data(n=N)
    reference = _model(balancer)
    expected = _fit(reference, x, y, epochs=EPOCHS).history

    backup = str(tmp_path / "backup")
    model = _model(balancer)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(
            model,
            x,
            y,
            epochs=EPOCHS,
            callbacks=[keras.callbacks.BackupAndRestore(backup), _Interrupt(epoch=2)],
        )
    # A restarted job: a new model and callback, the same backup directory.
    model = _model(balancer)
    history = _fit(model, x, y, epochs=EPOCHS, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert history.epoch == [2]
    _assert_same_logs(history.history, {k: v[2:] for k, v in expected.items()})
    _assert_same_state(_state(model), _state(reference))
    assert any(np.any(v != 0) for v in _state(reference)["balancer"] + _state(reference)["seeds"])
    assert not os.path.exists(backup)  # delete_checkpoint=True, Keras's default


def _replayed_run(balancer, x, y, plain=False):
    """The steps that Keras's `BackupAndRestore` takes when the run saved after
    batch 1 of epoch 1 is resumed: it restores that state and restarts epoch
    1 from its first batch (the batch in its metadata is not used)."""
    model = _model(balancer, plain)
    _fit(model, x, y, epochs=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(model, x, y, epochs=2, initial_epoch=1, callbacks=[_Interrupt(epoch=1, batch=1)])
    _fit(model, x, y, epochs=EPOCHS, initial_epoch=1)
    return model


def _interrupted_mid_epoch_and_resumed(balancer, x, y, backup, fresh, plain=False):
    model = _model(balancer, plain)
    callback = keras.callbacks.BackupAndRestore(backup, save_freq=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        # Saved after batches 1 and 3 of epoch 0 and batch 1 of epoch 1,
        # interrupted after batch 2 of epoch 1.
        _fit(model, x, y, epochs=EPOCHS, callbacks=[callback, _Interrupt(epoch=1, batch=2)])
    if fresh:
        model = _model(balancer, plain)
        callback = keras.callbacks.BackupAndRestore(backup, save_freq=2)
    history = _fit(model, x, y, epochs=EPOCHS, callbacks=[callback])
    assert history.epoch == [1, 2]
    return model


@pytest.mark.parametrize(("balancer", "fresh"), [("dwa", True), ("db_mtl", False)])
def test_backup_and_restore_mid_epoch_takes_the_steps_plain_keras_takes(tmp_path, balancer, fresh):
    # DWA: the restarted epoch drops the saved partial one, which never ended.
    x, y = data(n=N)
    model = _interrupted_mid_epoch_and_resumed(balancer, x, y, str(tmp_path / "b"), fresh)
    _assert_same_state(_state(model), _state(_replayed_run(balancer, x, y)))


def test_plain_keras_resumes_mid_epoch_by_rerunning_the_epoch_and_ew_does_the_same(tmp_path):
    x, y = data(n=N)
    plain = _interrupted_mid_epoch_and_resumed(None, x, y, str(tmp_path / "p"), False, plain=True)
    ours = _interrupted_mid_epoch_and_resumed("ew", x, y, str(tmp_path / "o"), False)
    for model in (plain, ours):
        # Not the uninterrupted run: epoch 1 restarted after two of its steps.
        assert int(model.optimizer.iterations) == N // BATCH * EPOCHS + 2
    for a, b in zip(ours.trainable_variables, plain.trainable_variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_backup_and_restore_with_delete_checkpoint_false_restores_the_finished_run(tmp_path):
    x, y = data(n=N)
    backup = str(tmp_path / "backup")
    model = _model("famo")
    _fit(
        model,
        x,
        y,
        epochs=EPOCHS,
        callbacks=[keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)],
    )
    assert os.path.exists(os.path.join(backup, "latest.weights.h5"))
    restored = _model("famo")
    callback = keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)
    history = _fit(restored, x, y, epochs=EPOCHS, callbacks=[callback])
    assert history.epoch == []  # every epoch was done
    _assert_same_state(_state(restored), _state(model))


class _Snapshot(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.state = epoch, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.state = _state(self.model)


@pytest.mark.parametrize("balancer", ["db_mtl", "famo"])
def test_model_checkpoint_weights_bring_back_the_balancer_state(tmp_path, balancer):
    # DB-MTL creates its moving gradients at the first `fit`: a freshly
    # compiled model has none until the weights file gives them.
    x, y = data(n=N)
    pattern = str(tmp_path / "e{epoch}.weights.h5")
    checkpoint = keras.callbacks.ModelCheckpoint(pattern, save_weights_only=True)
    snapshot = _Snapshot(epoch=1)
    reference = _model(balancer)
    _fit(reference, x, y, epochs=EPOCHS, callbacks=[checkpoint, snapshot])
    finished = _state(reference)

    model = _model(balancer)
    # As for any Keras model: the optimizer's variables exist before loading.
    model.optimizer.build(model.trainable_variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "Skipped the saved state"
        model.load_weights(pattern.format(epoch=2))
    _assert_same_state(_state(model), snapshot.state)
    _fit(model, x, y, epochs=EPOCHS, initial_epoch=2)
    _assert_same_state(_state(model), finished)

    # Rolled back in the middle of training, as to a best checkpoint.
    reference.load_weights(pattern.format(epoch=2))
    _assert_same_state(_state(reference), snapshot.state)


def test_fit_takes_a_single_callback_or_a_callback_list_as_keras_does():
    # The balancer's epoch hook was added with `list(callbacks)`: a single
    # callback or a `CallbackList` (which Keras accepts) raised a TypeError.
    x, y = data(n=N)
    single = _model("dwa")
    snapshot = _Snapshot(epoch=1)
    _fit(single, x, y, epochs=2, callbacks=snapshot)
    model = _model("dwa")
    history = keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList([history], model=model)
    _fit(model, x, y, epochs=2, callbacks=callbacks)
    assert callbacks.callbacks == [history]  # the hook left it
    assert history.epoch == [0, 1]
    # DWA was told of both epochs by the hook, in both runs.
    for trained in (single, model):
        assert float(trained.balancer.epoch) == 1.0
        assert float(trained.balancer.completed_epochs) == 1.0
    _assert_same_state(_state(model), snapshot.state)


# ------------------------------------------------------------ input pipelines
def _batches(x, y, sample_weight, index):
    part = slice(index * BATCH, (index + 1) * BATCH)
    batch = (x[part], {k: v[part] for k, v in y.items()})
    if sample_weight is not None:
        batch += ({k: v[part] for k, v in sample_weight.items()},)
    return batch


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, sample_weight=None, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.sample_weight = x, y, sample_weight

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, index):
        return _batches(self.x, self.y, self.sample_weight, index)


def _forever(x, y, sample_weight=None):
    while True:
        for index in range(len(x) // BATCH):
            yield _batches(x, y, sample_weight, index)


def _partial_sample_weights():
    # 0 marks a missing label; the dict leaves out task_2 (its examples weigh 1).
    rng = np.random.default_rng(3)
    return {"task_1": (rng.uniform(size=N) > 0.3).astype("float32")}


@pytest.mark.parametrize(("balancer", "weighted"), [("dwa", False), ("db_mtl", True)])
def test_pydataset_generator_and_infinite_dataset_train_as_arrays(balancer, weighted):
    x, y = data(n=N)
    sample_weight = _partial_sample_weights() if weighted else None
    reference = _model(balancer)
    expected = _fit(reference, x, y, epochs=2, sample_weight=sample_weight).history
    steps = N // BATCH
    parts = (x, y) if sample_weight is None else (x, y, sample_weight)
    pipelines = {
        "PyDataset": lambda m: m.fit(
            _Batches(x, y, sample_weight), epochs=2, shuffle=False, verbose=0
        ),
        "generator": lambda m: m.fit(
            _forever(x, y, sample_weight), epochs=2, steps_per_epoch=steps, shuffle=False, verbose=0
        ),
        "infinite tf.data": lambda m: m.fit(
            tf.data.Dataset.from_tensor_slices(parts).batch(BATCH).repeat(),
            epochs=2,
            steps_per_epoch=steps,
            shuffle=False,
            verbose=0,
        ),
    }
    for name, fit in pipelines.items():
        model = _model(balancer)
        history = fit(model).history
        _assert_same_logs(history, expected)
        _assert_same_state(_state(model), _state(reference))
        assert name  # named in the traceback of a failure


def test_validation_datasets_steps_freq_and_initial_epoch_as_arrays():
    x, y = data(n=N)
    vx, vy = data(n=40, seed=5)
    reference = _model("db_mtl")
    expected = _fit(
        reference,
        x,
        y,
        epochs=4,
        validation_data=(vx[: 2 * BATCH], _head(vy, 2 * BATCH)),
        validation_freq=2,
    ).history
    assert len(expected["val_loss"]) == 2 and "val_task_1_weight" in expected

    model = _model("db_mtl")
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    # Two steps of batches of 16 from 40 examples: the first 32.
    first = model.fit(
        train,
        epochs=2,
        validation_data=_Batches(vx, vy),
        validation_steps=2,
        validation_freq=2,
        shuffle=False,
        verbose=0,
    ).history
    infinite = tf.data.Dataset.from_tensor_slices((vx, vy)).batch(BATCH).repeat()
    second = model.fit(
        train,
        epochs=4,
        initial_epoch=2,
        validation_data=infinite,
        validation_steps=2,
        validation_freq=2,
        shuffle=False,
        verbose=0,
    )
    assert second.epoch == [2, 3]
    history = {k: first[k] + second.history[k] for k in first}
    _assert_same_logs(history, expected)
    _assert_same_state(_state(model), _state(reference))


# ---------------------------------------------------- logged weights, losses
def test_a_task_without_labels_for_an_epoch_logs_weight_0_in_fit_and_evaluate():
    # The documented convention: like its `<task>_loss`, the weight of a task
    # that added nothing to the objective is logged 0, in `fit`, its
    # validation and `evaluate` alike; the task keeps its last weight, which
    # `evaluate` applies once it has labels.
    x, y = data(n=32)
    unlabelled = {"task_1": y["task_1"], "task_2": np.full_like(y["task_2"], np.nan)}
    model = build()
    model.compile(
        optimizer="adam", loss=LOSS, balancer=keras_mtl.balancers.StaticWeighting([2.0, 3.0])
    )
    history = _fit(model, x, unlabelled, epochs=1, validation_data=(x, unlabelled)).history
    assert history["task_1_weight"] == [2.0] and history["val_task_1_weight"] == [2.0]
    assert history["task_2_weight"] == [0.0] and history["val_task_2_weight"] == [0.0]
    assert history["task_2_loss"] == [0.0] and history["val_task_2_loss"] == [0.0]
    logs = model.evaluate(x, unlabelled, batch_size=BATCH, verbose=0, return_dict=True)
    assert (logs["task_2_weight"], logs["task_2_loss"]) == (0.0, 0.0)
    np.testing.assert_array_equal(np.asarray(model._last_task_weights), [2.0, 3.0])
    logs = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    assert (logs["task_1_weight"], logs["task_2_weight"]) == (2.0, 3.0)
    expected = 2.0 * logs["task_1_loss"] + 3.0 * logs["task_2_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-6)


def test_compile_resolves_each_loss_once_and_saves_what_was_given():
    model = build()
    config = keras.saving.serialize_keras_object(keras.losses.MeanSquaredError())
    with mock.patch.object(keras.losses, "get", wraps=keras.losses.get) as get:
        model.compile(optimizer="sgd", loss={"task_1": "mse", "task_2": config})
    assert get.call_count == 2  # one per task
    assert model.get_compile_config()["loss"] == {"task_1": "mse", "task_2": config}


def test_a_loss_given_as_a_config_dict_behaves_as_the_loss_object(tmp_path):
    # The step read `ignore_class` and the label-width check from the
    # identifier: a config dict's ignored labels counted as labelled with
    # loss 0, and its Keras loss broadcast labels of another width.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    classes = np.argmax(x[:, :3], 1).astype("int32")
    classes[rng.random(32) < 0.5] = -1
    y = {"c": classes, "r": x[:, :1]}

    def classifier():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, activation="tanh")(inputs)
        outputs = {"c": keras.layers.Dense(3, name="c")(h), "r": keras.layers.Dense(1, name="r")(h)}
        return keras_mtl.MultiTaskModel(inputs, outputs)

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    results = []
    for identifier in (loss, keras.saving.serialize_keras_object(loss)):
        model = classifier()
        model.compile(optimizer="sgd", loss={"c": identifier, "r": "mse"})
        results.append(model.evaluate(x, y, verbose=0, return_dict=True))
    assert results[1] == pytest.approx(results[0], rel=1e-6)

    # Saved as the loss it describes: `load_model` did not find the short
    # form (no module) that `keras.losses.get` takes.
    model = classifier()
    model.compile(optimizer="sgd", loss={"c": identifier, "r": {"class_name": "MeanSquaredError"}})
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(results[0], rel=1e-6)

    # A new model: a retrace of the step sees shapes of unknown width.
    model = classifier()
    model.compile(optimizer="sgd", loss={"c": identifier, "r": {"class_name": "MeanSquaredError"}})
    wide = {"c": classes, "r": np.repeat(x[:, :1], 3, axis=1)}
    with pytest.raises(ValueError, match=r"Received: y\['r'\] with shape \(\w+, 3\)"):
        model.evaluate(x, wide, verbose=0)
