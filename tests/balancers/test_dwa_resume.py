"""DWA's epochs across interruptions: an epoch that began and never ended is
replayed from its first step (`BackupAndRestore` from a mid-epoch backup, a
`fit` called again), so its partial loss sums must not make an epoch."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.balancers import DWA, InitialLossNormalization, LogLoss

TASKS = ("task_1", "task_2")
BATCH = 4
STEPS = 4  # steps per epoch
EPOCHS = 5


def _data():
    """Four batches per epoch; the first two have zero inputs.

    The model below has no biases, so on those batches its outputs are 0: the
    losses (`mean(y**2)`) are positive but every gradient is 0 and SGD leaves
    the weights as they are. Keras resumes from a backup taken after batch 1
    by running the epoch again from batch 0; replaying batches 0 and 1 then
    changes nothing but DWA's bookkeeping, and the resumed run can be
    compared with the uninterrupted one.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS, 3)).astype("float32")
    x[: 2 * BATCH] = 0.0
    y = {
        "task_1": (2.0 * x[:, :1] + rng.normal(size=(len(x), 1)) + 1.0).astype("float32"),
        "task_2": (x[:, 1:2] - x[:, 2:3] + 0.5 * rng.normal(size=(len(x), 1))).astype("float32"),
    }
    return x, y


def _model(balancer="dwa"):
    inputs = keras.Input((3,))
    h = keras.layers.Dense(
        8,
        activation="tanh",
        use_bias=False,
        kernel_initializer=keras.initializers.GlorotUniform(seed=1),
        name="shared",
    )(inputs)
    outputs = {
        t: keras.layers.Dense(
            1,
            use_bias=False,
            kernel_initializer=keras.initializers.GlorotUniform(seed=2 + i),
            name=t,
        )(h)
        for i, t in enumerate(TASKS)
    }
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss={t: "mse" for t in TASKS},
        balancer=balancer,
    )
    return model


def _fit(model, x, y, **kwargs):
    return model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, **kwargs)


class _Interrupt(keras.callbacks.Callback):
    """Raises `error` after batch `batch` of epoch `epoch`."""

    def __init__(self, epoch, batch, error=RuntimeError):
        super().__init__()
        self.epoch, self.batch, self.error, self.current = epoch, batch, error, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            raise self.error("interrupted")


class _EpochLogs(keras.callbacks.Callback):
    """The logs of every epoch that ended, across `fit` calls."""

    def __init__(self):
        super().__init__()
        self.logs = {}

    def on_epoch_end(self, epoch, logs=None):
        self.logs[epoch] = dict(logs)


def _dwa_state(model):
    b = model.balancer
    names = ("last_mean_losses", "previous_mean_losses", "completed_epochs", "epoch_steps")
    return {name: np.asarray(getattr(b, name)) for name in names}


def _assert_same_run(model, logs, reference, reference_logs, skip=()):
    """The same epoch logs, DWA state and weights (the balancer's and the
    model's own state included, but for the variables named in `skip`)."""
    assert sorted(logs) == sorted(reference_logs)
    for epoch, expected in reference_logs.items():
        assert sorted(logs[epoch]) == sorted(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(
                logs[epoch][key], value, rtol=1e-5, err_msg=f"{key} of epoch {epoch}"
            )
    for key, value in _dwa_state(reference).items():
        np.testing.assert_allclose(_dwa_state(model)[key], value, rtol=1e-6, err_msg=key)
    for a, b in zip(model.weights, reference.weights, strict=True):
        if a.name in skip:
            continue
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7, err_msg=a.path
        )


def _uninterrupted(x, y):
    model, logs = _model(), _EpochLogs()
    _fit(model, x, y, epochs=EPOCHS, callbacks=[logs])
    # DWA is doing something: epoch 3's weights are not all 1.
    assert not np.allclose([logs.logs[3][f"{t}_weight"] for t in TASKS], 1.0)
    return model, logs.logs


@pytest.mark.parametrize("epoch", [0, 2])
def test_backup_and_restore_mid_epoch_resumes_the_uninterrupted_run(tmp_path, epoch):
    x, y = _data()
    reference, reference_logs = _uninterrupted(x, y)

    backup = str(tmp_path / "backup")
    model, logs = _model(), _EpochLogs()
    with pytest.raises(RuntimeError, match="interrupted"):
        # Saved after batches 1 and 3 of every epoch; killed after batch 2 of
        # `epoch`, so the backup holds batches 0 and 1 of `epoch`.
        _fit(
            model,
            x,
            y,
            epochs=EPOCHS,
            callbacks=[
                keras.callbacks.BackupAndRestore(backup, save_freq=2),
                _Interrupt(epoch, batch=2),
                logs,
            ],
        )
    # A restarted job: a new model and callback, the same backup directory.
    model = _model()
    callback = keras.callbacks.BackupAndRestore(backup, save_freq=2)
    history = _fit(model, x, y, epochs=EPOCHS, callbacks=[callback, logs])
    assert history.epoch == list(range(epoch, EPOCHS))
    # Keras restarted `epoch` from its first step (the steps of the backup
    # were taken twice).
    assert int(model.optimizer.iterations) == STEPS * EPOCHS + 2
    _assert_same_run(model, logs.logs, reference, reference_logs)


def test_fit_interrupted_and_called_again_resumes_the_uninterrupted_run():
    x, y = _data()
    reference, reference_logs = _uninterrupted(x, y)
    model, logs = _model(), _EpochLogs()
    with pytest.raises(KeyboardInterrupt):
        _fit(
            model,
            x,
            y,
            epochs=EPOCHS,
            callbacks=[_Interrupt(2, batch=1, error=KeyboardInterrupt), logs],
        )
    _fit(model, x, y, epochs=EPOCHS, initial_epoch=2, callbacks=[logs])
    _assert_same_run(model, logs.logs, reference, reference_logs)


def test_repeated_fit_of_one_epoch_rolls_epochs():
    # Each `fit(epochs=1)` runs an epoch 0; each ended, so the next closes it:
    # the same run as `fit(epochs=3)`.
    x, y = _data()
    reference, reference_logs = _model(), _EpochLogs()
    _fit(reference, x, y, epochs=3, callbacks=[reference_logs])
    model, logs = _model(), {}
    for epoch in range(3):
        history = _fit(model, x, y, epochs=1)
        logs[epoch] = {k: v[0] for k, v in history.history.items()}
    assert float(model.balancer.completed_epochs) == 2.0
    # The epoch index differs: 0, where `fit(epochs=3)` ends at 2.
    _assert_same_run(model, logs, reference, reference_logs.logs, skip=("epoch",))


@pytest.mark.parametrize("wrapper", [LogLoss, InitialLossNormalization])
def test_wrappers_forward_the_end_of_an_epoch(wrapper):
    b = wrapper(DWA())
    b.build(2)
    b.on_epoch_begin(0)
    b.aggregate(None, [2.0, 1.0])
    b.on_epoch_begin(0)  # interrupted and begun again: discarded
    assert float(b.inner.completed_epochs) == 0.0 and float(b.inner.epoch_steps) == 0.0
    b.aggregate(None, [2.0, 1.0])
    b.on_epoch_end(0)
    b.on_epoch_begin(0)  # ended, then a new `fit`: closed
    assert float(b.inner.completed_epochs) == 1.0


def test_an_epoch_not_ended_is_closed_by_a_later_one_and_steps_outside_epochs_count():
    # A loop that reports only the beginnings of epochs keeps working.
    b = DWA()
    b.build(2)
    b.on_epoch_begin(0)
    b.aggregate(None, [2.0, 1.0])
    b.on_epoch_begin(1)
    assert float(b.completed_epochs) == 1.0
    np.testing.assert_array_equal(np.asarray(b.last_mean_losses), [2.0, 1.0])
    # Steps before any epoch began (`train_on_batch`) make an epoch.
    b = DWA()
    b.build(2)
    b.aggregate(None, [2.0, 1.0])
    b.on_epoch_begin(0)
    assert float(b.completed_epochs) == 1.0


def test_saving_keeps_an_epoch_that_has_not_ended(tmp_path):
    x, y = _data()
    model = _model()
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(model, x, y, epochs=2, callbacks=[_Interrupt(1, batch=1)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert float(loaded.balancer.epoch_ended) == 0.0
    for a, b in zip(loaded.balancer.variables, model.balancer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The loaded model replays epoch 1 as the interrupted one would.
    loaded.balancer.on_epoch_begin(1)
    assert float(loaded.balancer.epoch_steps) == 0.0
    assert float(loaded.balancer.completed_epochs) == 1.0
