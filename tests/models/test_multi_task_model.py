import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from tests.models.helpers import (
    TASKS,
    Capture,
    NormalizedEMA,
    brute_force_grads,
    build,
    data,
    run_in_a_fresh_process,
)

LOSS = {"task_1": "mse", "task_2": "mse"}


def _weights(model):
    return [np.array(v) for v in model.weights]


def test_ew_equals_plain_keras_with_summed_losses():
    x, y = data(n=96)
    plain = build(model_cls=keras.Model)
    ours = build()
    ours.set_weights(plain.get_weights())
    plain.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS)
    ours.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS, balancer="ew")
    h_plain = plain.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    h_ours = ours.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(plain.trainable_variables, ours.trainable_variables, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)
    assert abs(h_plain.history["loss"][0] - h_ours.history["loss"][0]) < 1e-5
    assert h_ours.history["task_1_weight"] == [1.0]


@pytest.mark.parametrize("mode", ["loop", "jacobian", "representation"])
def test_every_gradient_mode_matches_brute_force(mode):
    x, y = data(n=32)
    model = build(representation=True, regularizer=keras.regularizers.L2(0.05))
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=LOSS,
        balancer=Capture(),
        gradient_mode=mode,
        run_eagerly=True,
    )
    before = [np.array(v) for v in model.trainable_variables]
    expected = brute_force_grads(model, x, y, [0.3, 0.7])
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    after = [np.array(v) for v in model.trainable_variables]
    for b, a, g in zip(before, after, expected, strict=True):
        np.testing.assert_allclose(b - a, np.asarray(g), atol=1e-5)

    # The Jacobian rows the balancer saw are the single-task gradients.
    for v, b in zip(model.trainable_variables, before, strict=True):
        v.assign(b)
    jac, losses = Capture.last
    rep = model.get_layer("rep")
    sub = keras.Model(model.input, rep.output)
    for t, name in enumerate(TASKS):
        with tf.GradientTape(persistent=True) as tape:
            z = sub(x, training=True)
            tape.watch(z)
            tower = keras.Model(rep.output, model.get_layer(name).output)
            loss = tf.reduce_mean(tf.square(tower(z) - y[name]))
        if mode == "representation":
            row = tape.gradient(loss, z).numpy().ravel()
            # The balancer also gets the representation's value (GradDrop reads it).
            np.testing.assert_allclose(Capture.last_representation, z.numpy(), atol=1e-6)
        else:
            shared = [v for v in model.trainable_variables if v.path.startswith("trunk/")]
            row = np.concatenate([np.ravel(g) for g in tape.gradient(loss, shared)])
        np.testing.assert_allclose(jac[t], row, atol=1e-5)
        np.testing.assert_allclose(losses[t], loss.numpy(), rtol=1e-5)
    if mode != "representation":
        assert model.shared_variable_paths == ["trunk/dense_0/kernel", "trunk/dense_0/bias"]
        assert Capture.last_representation is None


def test_loss_only_balancer_takes_one_weighted_backward():
    x, y = data(n=32)
    model = build(regularizer=keras.regularizers.L2(0.05))
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=LOSS,
        balancer=keras_mtl.balancers.StaticWeighting({"task_1": 0.3, "task_2": 0.7}),
    )
    before = [np.array(v) for v in model.trainable_variables]
    expected = brute_force_grads(model, x, y, [0.3, 0.7])
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for b, v, g in zip(before, model.trainable_variables, expected, strict=True):
        np.testing.assert_allclose(b - np.array(v), np.asarray(g), atol=1e-5)
    assert history.history["task_2_weight"] == [pytest.approx(0.7)]


def test_all_labels_missing_leaves_the_task_tower_unchanged():
    x, y = data(n=48)
    y_nan = {"task_1": y["task_1"], "task_2": np.full_like(y["task_2"], np.nan)}
    model = build()
    model.compile(
        optimizer="adam", loss=LOSS, balancer=NormalizedEMA(), metrics={"task_2": ["mae"]}
    )
    tower = [v for v in model.trainable_variables if v.path.startswith("task_2")]
    assert len(tower) == 4
    before = [np.array(v) for v in tower]
    history = model.fit(x, y_nan, batch_size=16, epochs=2, verbose=0)
    for b, v in zip(before, tower, strict=True):
        np.testing.assert_array_equal(b, np.array(v))
    assert history.history["task_2_loss"] == [0.0, 0.0]
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(np.all(np.isfinite(np.array(v))) for v in model.weights)
    # `evaluate` too gives a task without any label in the batch loss 0, not 0 / 0.
    result = model.evaluate(x, y_nan, batch_size=16, verbose=0, return_dict=True)
    assert result["task_2_loss"] == 0.0
    assert np.isfinite(result["loss"])


def test_partially_missing_labels_average_over_labelled_examples():
    x, y = data(n=8)
    weight = np.array([1, 0, 1, 1, 0, 1, 1, 1], "float32")
    y_nan = dict(y)
    y_nan["task_1"] = np.where(weight[:, None] > 0, y["task_1"], np.nan)
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSS)
    pred = model.predict(x, verbose=0)
    expected = np.sum(weight * (pred["task_1"][:, 0] - y["task_1"][:, 0]) ** 2) / weight.sum()
    by_nan = model.evaluate(x, y_nan, batch_size=8, verbose=0, return_dict=True)
    by_weight = model.evaluate(
        x,
        y,
        sample_weight={"task_1": weight, "task_2": np.ones(8, "float32")},
        batch_size=8,
        verbose=0,
        return_dict=True,
    )
    assert by_nan["task_1_loss"] == pytest.approx(expected, rel=1e-5)
    assert by_weight["task_1_loss"] == pytest.approx(expected, rel=1e-5)


def test_metrics_ignore_unlabelled_examples():
    # Missing by NaN for task_1, by a zero weight for task_2: the metrics see
    # the labelled examples only (a NaN label replaced by 0 would count).
    x, y = data(n=8)
    missing = np.array([0, 1, 0, 0, 1, 0, 0, 1], bool)
    y_nan = {"task_1": np.where(missing[:, None], np.nan, y["task_1"]), "task_2": y["task_2"]}
    sample_weight = {"task_2": (~missing).astype("float32")}
    model = build()
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=LOSS,
        metrics={"task_1": ["mae"], "task_2": ["mae"]},
    )
    pred = model.predict(x, verbose=0)
    expected = {f"{t}_mae": float(np.mean(np.abs(pred[t] - y[t])[~missing])) for t in TASKS}
    result = model.evaluate(
        x, y_nan, sample_weight=sample_weight, batch_size=8, verbose=0, return_dict=True
    )
    history = model.fit(x, y_nan, sample_weight=sample_weight, batch_size=8, verbose=0)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-5), key
        assert history.history[key] == [pytest.approx(value, rel=1e-5)], key


def test_sample_weights_scale_the_per_example_losses():
    # L_t = sum_i w_i l_i / #{i : w_i > 0}: weights other than 0 and 1 count.
    x, y = data(n=8)
    weight = np.array([2.0, 0.0, 1.0, 3.0, 0.5, 1.0, -1.0, 1.0], "float32")
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSS)
    pred = model.predict(x, verbose=0)
    square = (pred["task_1"][:, 0] - y["task_1"][:, 0]) ** 2
    positive = np.maximum(weight, 0.0)
    expected = np.sum(positive * square) / np.count_nonzero(positive)
    sample_weight = {"task_1": weight, "task_2": np.ones(8, "float32")}
    result = model.evaluate(
        x, y, sample_weight=sample_weight, batch_size=8, verbose=0, return_dict=True
    )
    assert result["task_1_loss"] == pytest.approx(expected, rel=1e-5)
    history = model.fit(x, y, sample_weight=sample_weight, batch_size=8, verbose=0)
    assert history.history["task_1_loss"] == [pytest.approx(expected, rel=1e-5)]


def test_labels_of_higher_rank_average_over_positions_and_nan_anywhere_masks():
    # Per-example losses of shape (batch, 4) are averaged like Keras's mean;
    # a NaN in any entry of an example's label marks the whole example missing.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 3))
    h = keras.layers.Dense(5, name="trunk")(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs=inputs,
        outputs={"task_1": keras.layers.Dense(2)(h), "task_2": keras.layers.Dense(1)(h)},
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 3)).astype("float32")
    y = {
        "task_1": rng.normal(size=(6, 4, 2)).astype("float32"),
        "task_2": rng.normal(size=(6, 4, 1)).astype("float32"),
    }
    pred = model.predict(x, verbose=0)
    result = model.evaluate(x, y, batch_size=6, verbose=0, return_dict=True)
    for name in TASKS:
        keras_mean = float(keras.losses.MeanSquaredError()(y[name], pred[name]))
        assert result[f"{name}_loss"] == pytest.approx(keras_mean, rel=1e-5)
    y_nan = {"task_1": y["task_1"].copy(), "task_2": y["task_2"]}
    y_nan["task_1"][0, 1, 0] = np.nan
    expected = np.mean((pred["task_1"][1:] - y["task_1"][1:]) ** 2)
    result = model.evaluate(x, y_nan, batch_size=6, verbose=0, return_dict=True)
    assert result["task_1_loss"] == pytest.approx(expected, rel=1e-5)
    history = model.fit(x, y_nan, batch_size=6, verbose=0)
    assert history.history["task_1_loss"] == [pytest.approx(expected, rel=1e-5)]


def test_logged_loss_adds_the_regularisation_in_fit_and_evaluate():
    x, y = data(n=32)
    model = build(regularizer=keras.regularizers.L2(0.05))
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=LOSS,
        balancer=keras_mtl.balancers.StaticWeighting({"task_1": 0.3, "task_2": 0.7}),
    )
    pred = model(x)
    task = [float(np.mean((np.asarray(pred[t]) - y[t]) ** 2)) for t in TASKS]
    reg = float(sum(model.losses))
    assert reg > 0.05
    expected = 0.3 * task[0] + 0.7 * task[1] + reg
    history = model.fit(x, y, batch_size=32, verbose=0)
    assert history.history["loss"] == [pytest.approx(expected, rel=1e-5)]
    result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("balancer", ["db_mtl", "log"])
def test_logged_loss_stays_at_the_number_of_tasks_under_inverse_loss_weights(balancer):
    # What the docstrings of MultiTaskModel, DBMTL and LogLoss warn of: w_t = 1 / L_t makes
    # sum_t w_t L_t = T at every step, while the task losses fall.
    x, y = data(n=64)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS, balancer=balancer)
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
    assert history["loss"] == pytest.approx([2.0] * 3, rel=1e-6)
    assert history["task_1_loss"][-1] < 0.9 * history["task_1_loss"][0]


def _relative_square(y_true, y_pred):
    # Infinite where the label is 0, as the NaN labels are once replaced.
    return tf.reduce_mean(tf.square(y_pred - y_true) / y_true, axis=-1)


@pytest.mark.parametrize(
    ("balancer", "weights", "mode"),
    [
        ("ew", [1.0, 1.0], "auto"),
        (Capture(), [0.3, 0.7], "loop"),
        (Capture(), [0.3, 0.7], "jacobian"),
        (Capture(), [0.3, 0.7], "representation"),
    ],
)
def test_unlabelled_examples_put_no_nan_into_the_gradient(balancer, weights, mode):
    x, y = data(n=8)
    y = {name: v + 5.0 for name, v in y.items()}
    labelled_1 = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
    sw_2 = np.array([1, 1, 1, np.nan, 1, 0, -1, 1], "float32")
    labelled_2 = sw_2 > 0
    y_nan = {"task_1": np.where(labelled_1[:, None], y["task_1"], np.nan), "task_2": y["task_2"]}
    model = build(representation=mode == "representation")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss={"task_1": _relative_square, "task_2": "mse"},
        balancer=balancer,
        gradient_mode=mode,
    )
    before = [np.array(v) for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss_1 = tf.reduce_mean(
            _relative_square(y["task_1"][labelled_1], pred["task_1"][labelled_1])
        )
        loss_2 = tf.reduce_mean(tf.square(pred["task_2"][labelled_2] - y["task_2"][labelled_2]))
        total = weights[0] * loss_1 + weights[1] * loss_2
    expected = tape.gradient(total, model.trainable_variables)
    sample_weight = {"task_1": np.ones(8, "float32"), "task_2": sw_2}
    history = model.fit(x, y_nan, sample_weight=sample_weight, batch_size=8, verbose=0)
    for b, v, g in zip(before, model.trainable_variables, expected, strict=True):
        np.testing.assert_allclose((b - np.array(v)) / 0.1, np.asarray(g), rtol=1e-4, atol=1e-6)
    assert history.history["task_1_loss"] == [pytest.approx(float(loss_1), rel=1e-5)]


def test_save_load_resume_takes_the_same_next_step(tmp_path):
    x, y = data(n=64)
    model = build()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=LOSS,
        balancer=NormalizedEMA(0.7),
        metrics={"task_1": ["mae"]},
    )
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.balancer, NormalizedEMA) and loaded.balancer.beta == 0.7
    np.testing.assert_array_equal(np.array(loaded.balancer.ema), np.array(model.balancer.ema))
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-7)


def test_export_serves_the_task_dict_in_a_fresh_process(tmp_path):
    x, _ = data(n=8)
    model = build()
    model.compile(optimizer="adam", loss=LOSS)
    model.export(str(tmp_path / "served"), verbose=False)
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)
    script = (
        "import numpy as np, tensorflow as tf, sys\n"
        f"m = tf.saved_model.load({str(tmp_path / 'served')!r})\n"
        f"out = m.serve(tf.constant(np.load({str(tmp_path / 'x.npy')!r})))\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, **{{k: v.numpy() for k, v in out.items()}})\n"
    )
    run_in_a_fresh_process(script)
    served = np.load(tmp_path / "out.npz")
    assert sorted(served.files) == sorted(TASKS)
    for name in TASKS:
        np.testing.assert_allclose(served[name], expected[name], rtol=1e-5, atol=1e-6)


def test_callbacks_and_validation_data_work(tmp_path):
    x, y = data(n=64)
    model = build()
    model.compile(
        optimizer="adam",
        loss=LOSS,
        balancer=NormalizedEMA(),
        metrics={"task_1": ["mae"], "task_2": ["mae"]},
    )
    history = model.fit(
        x,
        y,
        validation_data=(x[:16], {k: v[:16] for k, v in y.items()}),
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=5),
            keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_loss"),
            # What the docstring advises under inverse-loss weights; Keras needs the mode.
            keras.callbacks.EarlyStopping(monitor="val_task_1_loss", mode="min", patience=5),
            keras.callbacks.ModelCheckpoint(
                str(tmp_path / "best_mae.keras"), monitor="val_task_2_mae", mode="min"
            ),
            keras.callbacks.TensorBoard(str(tmp_path / "tb")),
        ],
    )
    for key in (
        "loss",
        "task_1_loss",
        "task_2_weight",
        "task_1_mae",
        "val_loss",
        "val_task_2_loss",
        "val_task_2_mae",
        "val_task_1_weight",
    ):
        assert len(history.history[key]) == 3, key
    assert (tmp_path / "best.keras").exists() and (tmp_path / "best_mae.keras").exists()
    assert any((tmp_path / "tb").rglob("events.out.tfevents*"))
    # `evaluate` weighs the tasks with the weights of the last training step.
    last = np.array(model.balancer.ema)  # NormalizedEMA's weights are its state
    result = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    assert [result["task_1_weight"], result["task_2_weight"]] == pytest.approx(last, rel=1e-6)
    objective = last[0] * result["task_1_loss"] + last[1] * result["task_2_loss"]
    assert result["loss"] == pytest.approx(objective, rel=1e-5)


def test_logged_means_over_unequal_batches():
    # 40 examples in batches of 16, 16 and 8: the losses are averaged over
    # examples (as Keras's `loss`), the task weights over steps.
    x, y = data(n=40)
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSS, balancer=NormalizedEMA())
    pred = model.predict(x, verbose=0)
    task = [float(np.mean((pred[t] - y[t]) ** 2)) for t in TASKS]
    steps = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: steps.append(np.array(model.balancer.ema))
    )
    history = model.fit(x, y, batch_size=16, shuffle=False, verbose=0, callbacks=[record])
    steps = np.stack(steps)  # NormalizedEMA's weights are its state after each step
    assert len(steps) == 3 and not np.allclose(steps[1], steps[2], rtol=1e-3)
    for t, name in enumerate(TASKS):
        assert history.history[f"{name}_loss"] == [pytest.approx(task[t], rel=1e-5)]
        assert history.history[f"{name}_weight"] == [pytest.approx(steps[:, t].mean(), rel=1e-5)]
    # The objective of each step, weighted by its batch size.
    sizes = np.array([16, 16, 8])
    per_step = [
        sum(
            steps[i, t] * np.mean((pred[name][b] - y[name][b]) ** 2) for t, name in enumerate(TASKS)
        )
        for i, b in enumerate([slice(0, 16), slice(16, 32), slice(32, 40)])
    ]
    expected = np.sum(sizes * np.array(per_step)) / sizes.sum()
    assert history.history["loss"] == [pytest.approx(expected, rel=1e-5)]


def _fit_with_ema(x, y, optimizer, batch_size, epochs, **compile_kwargs):
    """Weights and history of `build()` trained with the stateful `NormalizedEMA`."""
    model = build()
    model.compile(optimizer=optimizer, loss=LOSS, balancer=NormalizedEMA(), **compile_kwargs)
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return _weights(model), history.history


def test_graph_mode_with_jit_compile_matches_eager():
    x, y = data(n=32)
    eager, _ = _fit_with_ema(x, y, keras.optimizers.SGD(0.1), 16, 1, run_eagerly=True)
    jit, _ = _fit_with_ema(x, y, keras.optimizers.SGD(0.1), 16, 1, jit_compile=True)
    for a, b in zip(eager, jit, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_auto_jit_compile_is_turned_off_for_balancers_that_xla_cannot_run(monkeypatch):
    # Keras resolves "auto" to False on a CPU-only machine; pretend there is an
    # accelerator, where it would turn XLA on.
    monkeypatch.setattr(keras_mtl.MultiTaskModel, "_resolve_auto_jit_compile", lambda self: True)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer="mgda")
    assert model.jit_compile is True
    # cvxpy runs in tf.numpy_function, which XLA cannot compile.
    model.compile(optimizer="sgd", loss=LOSS, balancer=keras_mtl.balancers.MGDA(solver="cvxpy"))
    assert model.jit_compile is False


def test_steps_per_execution_takes_the_same_steps():
    # Several steps in one graph call must still update the balancer state and
    # the logged weights step by step.
    x, y = data(n=64)
    w1, h1 = _fit_with_ema(x, y, keras.optimizers.Adam(0.01), 8, 2, steps_per_execution=1)
    w4, h4 = _fit_with_ema(x, y, keras.optimizers.Adam(0.01), 8, 2, steps_per_execution=4)
    for a, b in zip(w1, w4, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in ("loss", "task_1_loss", "task_1_weight", "task_2_weight"):
        np.testing.assert_allclose(h1[key], h4[key], rtol=1e-5)
    assert h1["task_1_weight"][0] != 1.0


def test_subclassed_model_trains():
    @keras.saving.register_keras_serializable(package="keras_mtl_tests")
    class TwoTask(keras_mtl.MultiTaskModel):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.trunk = keras.layers.Dense(8, activation="relu")
            self.heads = {t: keras.layers.Dense(1) for t in TASKS}

        def call(self, inputs):
            h = self.trunk(inputs)
            return {t: self.heads[t](h) for t in TASKS}

    x, y = data(n=64)
    keras.utils.set_random_seed(0)  # the layers' initial weights and fit's shuffling
    model = TwoTask()
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=LOSS, balancer=NormalizedEMA())
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert history.history["task_1_loss"][-1] < history.history["task_1_loss"][0]
    assert model.shared_variable_paths == [v.path for v in model.trunk.trainable_variables]

    # One step with fixed weights equals the brute-force step.
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS, balancer=Capture())
    before = [np.array(v) for v in model.trainable_variables]
    expected = brute_force_grads(model, x, y, [0.3, 0.7])
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    for b, v, g in zip(before, model.trainable_variables, expected, strict=True):
        np.testing.assert_allclose(b - np.array(v), np.asarray(g), atol=1e-5)


def test_mixed_precision_trains_with_a_gradient_balancer():
    x, y = data(n=64)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build()
        model.compile(optimizer="adam", loss=LOSS, balancer=NormalizedEMA())
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][1] < history.history["loss"][0]


@pytest.mark.parametrize("balancer", ["db_mtl", "gradnorm"])
def test_an_overflowing_step_leaves_no_trace_in_the_balancers_state(balancer):
    # A loss scale of 2^30 overflows float16 gradients: the optimizer skips
    # those steps and halves the scale; the balancer must forget them too.
    x, y = data(n=64)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build()
    finally:
        keras.config.set_dtype_policy("float32")
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05), 2.0**30)
    model.compile(optimizer=optimizer, loss=LOSS, balancer=balancer)
    history = model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0).history
    skipped = 32 - int(optimizer.iterations)
    assert 1 <= skipped < 32
    assert float(optimizer.dynamic_scale) == 2.0 ** (30 - skipped)
    for v in model.balancer.variables:
        assert np.all(np.isfinite(np.array(v))), v.path
    # (DB-MTL's `loss` stays at T by design.)
    assert history["task_1_loss"][-1] < history["task_1_loss"][0]
    assert history["task_2_loss"][-1] < history["task_2_loss"][0]


@pytest.mark.parametrize("mode", ["loop", "jacobian", "representation"])
def test_mixed_precision_step_is_unscaled(mode):
    # SGD, unlike Adam, shows a gradient off by the loss scale.
    x, y = data(n=32)
    representation = mode == "representation"
    reference = build(representation=representation)
    expected = brute_force_grads(reference, x, y, [0.3, 0.7])
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build(representation=representation)
    finally:
        keras.config.set_dtype_policy("float32")
    model.set_weights(reference.get_weights())
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1.0), initial_scale=1024)
    model.compile(
        optimizer=optimizer, loss=LOSS, balancer=Capture(), gradient_mode=mode, run_eagerly=True
    )
    before = [np.array(v) for v in model.trainable_variables]
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert float(optimizer.dynamic_scale) == 1024.0  # the step was applied, not skipped
    for b, v, g in zip(before, model.trainable_variables, expected, strict=True):
        np.testing.assert_allclose(b - np.array(v), np.asarray(g), rtol=2e-2, atol=2e-3)
    jac, losses = Capture.last
    for t, name in enumerate(TASKS):
        pred = reference(x)[name]
        np.testing.assert_allclose(
            losses[t], float(tf.reduce_mean(tf.square(pred - y[name]))), rtol=2e-2
        )
    if representation:
        return  # the rows are per-example gradients, checked in float32 above
    shared = [v for v in reference.trainable_variables if v.path.startswith("trunk/")]
    with tf.GradientTape() as tape:
        loss_1 = tf.reduce_mean(tf.square(reference(x)["task_1"] - y["task_1"]))
    row = np.concatenate([np.ravel(g) for g in tape.gradient(loss_1, shared)])
    np.testing.assert_allclose(jac[0], row, rtol=2e-2, atol=2e-3)


def test_nonfinite_loss_raises_by_default_and_skip_mode_counts():
    x, y = data(n=32)
    y_bad = {"task_1": y["task_1"], "task_2": np.full_like(y["task_2"], np.inf)}
    model = build()
    model.compile(optimizer="adam", loss=LOSS, balancer=NormalizedEMA())
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"Non-finite task loss.*\(task_1, task_2\):\] \[[-0-9.e]+ inf\]",
    ):
        model.fit(x, y_bad, batch_size=16, epochs=1, verbose=0)

    model = build()
    model.compile(optimizer="adam", loss=LOSS, balancer=NormalizedEMA(), nonfinite="skip")
    model.build((None, 6))
    state = [*model.trainable_variables, *model.balancer.weights]
    before = [np.array(v) for v in state]
    history = model.fit(x, y_bad, batch_size=16, epochs=1, verbose=0)
    assert history.history["skipped_steps"] == [2.0]
    for b, v in zip(before, state, strict=True):
        np.testing.assert_array_equal(b, np.array(v))
    assert int(model.optimizer.iterations) == 0
    # A good batch afterwards trains normally.
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert not np.array_equal(before[0], np.array(model.trainable_variables[0]))


def test_a_skipped_step_restores_every_state_variable_of_the_balancer():
    # DB-MTL keeps a step count, moving loss norms and moving gradients; a
    # non-finite batch must leave all of them as they were, not only the first.
    x, y = data(n=32)
    y_bad = {"task_1": y["task_1"], "task_2": np.full_like(y["task_2"], np.inf)}
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer="db_mtl", nonfinite="skip")
    model.fit(x, y, batch_size=32, verbose=0)  # a good step: the state is not its initial value
    state = model.balancer.non_trainable_variables
    assert len(state) >= 3
    before = [np.array(v) for v in state]
    history = model.fit(x, y_bad, batch_size=16, verbose=0)
    assert history.history["skipped_steps"] == [2.0]
    for b, v in zip(before, state, strict=True):
        np.testing.assert_array_equal(b, np.array(v), err_msg=v.path)


@pytest.mark.parametrize("balancer", ["ew", NormalizedEMA()])
def test_a_nan_learning_rate_never_reaches_the_weights(balancer):
    x, y = data(n=32)
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(float("nan")), loss=LOSS, balancer=balancer)
    model.build((None, 6))
    state = [*model.trainable_variables, *model.balancer.weights]
    before = [np.array(v) for v in state]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Non-finite learning rate.*nan"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for b, v in zip(before, state, strict=True):
        np.testing.assert_array_equal(b, np.array(v))

    model.compile(
        optimizer=keras.optimizers.SGD(float("nan")), loss=LOSS, balancer="ew", nonfinite="skip"
    )
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert history.history["skipped_steps"] == [2.0]
    for b, v in zip(
        before[: len(model.trainable_variables)], model.trainable_variables, strict=True
    ):
        np.testing.assert_array_equal(b, np.array(v))


def test_skipped_steps_add_nothing_to_the_logged_means():
    x, y = data(n=32)
    y_bad = {"task_1": y["task_1"].copy(), "task_2": y["task_2"].copy()}
    y_bad["task_2"][:16] = np.inf  # the first batch of 16 is skipped
    model = build()
    model.compile(
        optimizer="sgd",
        loss=LOSS,
        balancer=NormalizedEMA(),
        metrics={"task_2": ["mae"]},
        nonfinite="skip",
    )
    # The second batch is the only one applied, with the initial weights.
    second = model.evaluate(
        x[16:], {k: v[16:] for k, v in y.items()}, batch_size=16, verbose=0, return_dict=True
    )
    history = model.fit(x, y_bad, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert history.history["skipped_steps"] == [1.0]
    for key in ("task_1_loss", "task_2_loss", "task_2_mae"):
        assert history.history[key][0] == pytest.approx(second[key], rel=1e-5), key
    # The weights too are those of the one applied step (NormalizedEMA's state
    # after it), not averaged with the zeros logged for the skipped one.
    applied = np.array(model.balancer.ema)
    assert not np.allclose(applied, 1.0)
    for t, name in enumerate(TASKS):
        assert history.history[f"{name}_weight"] == [pytest.approx(applied[t], rel=1e-5)]
    assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] > 0


def test_skipped_steps_is_a_running_total_across_fit_calls():
    x, y = data(n=32)
    y_bad = {"task_1": y["task_1"], "task_2": y["task_2"].copy()}
    y_bad["task_2"][:16] = np.inf
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, nonfinite="skip")
    totals = [
        model.fit(x, y_bad, batch_size=16, epochs=2, shuffle=False, verbose=0).history[
            "skipped_steps"
        ]
        for _ in range(2)
    ]
    assert totals == [[1.0, 2.0], [3.0, 4.0]]
    model.compile(optimizer="sgd", loss=LOSS, nonfinite="skip")
    history = model.fit(x, y_bad, batch_size=16, shuffle=False, verbose=0)
    assert history.history["skipped_steps"] == [5.0]


def test_evaluate_after_a_skipped_last_step_uses_the_last_applied_weights():
    x, y = data(n=32)
    y_bad = {"task_1": y["task_1"], "task_2": y["task_2"].copy()}
    y_bad["task_2"][16:] = np.inf  # the second and last batch is skipped
    model = build()
    model.compile(optimizer="sgd", loss=LOSS, balancer=NormalizedEMA(), nonfinite="skip")
    history = model.fit(x, y_bad, batch_size=16, shuffle=False, verbose=0)
    assert history.history["skipped_steps"] == [1.0]
    applied = np.array(model.balancer.ema)  # restored to the first step's weights
    assert np.all(np.isfinite(applied)) and not np.allclose(applied, 1.0)
    result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert [result["task_1_weight"], result["task_2_weight"]] == pytest.approx(applied, rel=1e-6)


@pytest.mark.parametrize(
    ("balancer", "mode", "sign", "mixed"),
    [("uw", "auto", 1.0, False), ("imtl", "loop", -1.0, False), ("imtl", "loop", -1.0, True)],
)
def test_balancer_variables_take_the_step_of_their_auxiliary_loss(balancer, mode, sign, mixed):
    # UW: aux = sum_t exp(-s_t) L_t + s_t, d/ds at s = 0 is 1 - L_t.
    # IMTL (hybrid): aux = sum_t exp(s_t) L_t - s_t, d/ds at s = 0 is L_t - 1.
    # One SGD step of rate 0.1 moves s to sign * 0.1 * (L_t - 1), also under
    # loss scaling (the optimizer unscales the auxiliary gradient too).
    x, y = data(n=32)
    optimizer = keras.optimizers.SGD(0.1)
    try:  # the global policy is restored even if a step below fails
        if mixed:
            keras.config.set_dtype_policy("mixed_float16")
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=1024)
        model = build()
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer=optimizer, loss=LOSS, balancer=balancer, gradient_mode=mode)
    (variable,) = model.balancer.trainable_variables
    pred = model(x)
    task = np.array([np.mean((np.asarray(pred[t], "float32") - y[t]) ** 2) for t in TASKS])
    model.fit(x, y, batch_size=32, verbose=0)
    rtol = 2e-2 if mixed else 1e-4
    np.testing.assert_allclose(np.array(variable), sign * 0.1 * (task - 1.0), rtol=rtol, atol=1e-6)


def test_the_auxiliary_loss_adds_no_gradient_to_the_model():
    # UW trains its log-variances s with sum_t exp(-s_t) L_t + s_t; the task
    # losses enter it with gradients stopped, so the model's step is that of
    # sum_t w_t L_t alone (w = exp(-s) = 1 at the start), not twice that.
    x, y = data(n=32)
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, balancer="uw")
    own = {id(v) for v in model.balancer.trainable_variables}
    variables = [v for v in model.trainable_variables if id(v) not in own]
    assert len(own) == 1 and len(variables) == len(model.trainable_variables) - 1
    before = [np.array(v) for v in variables]
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        total = sum(tf.reduce_mean(tf.square(pred[t] - y[t])) for t in TASKS)
    expected = tape.gradient(total, variables)
    history = model.fit(x, y, batch_size=32, verbose=0)
    assert history.history["task_1_weight"] == [1.0]
    for b, v, g in zip(before, variables, expected, strict=True):
        np.testing.assert_allclose((b - np.array(v)) / 0.1, np.asarray(g), rtol=1e-4, atol=1e-6)


def test_compile_config_keeps_the_gradient_options(tmp_path):
    x, y = data(n=16)
    model = build()
    model.compile(
        optimizer="sgd",
        loss=LOSS,
        balancer=NormalizedEMA(),
        metrics={"task_1": ["mae"]},
        shared_layers=["trunk"],
        gradient_mode="jacobian",
        nonfinite="skip",
        steps_per_execution=2,
    )
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    config = loaded.get_compile_config()
    assert config["shared_layers"] == ["trunk"]
    assert config["gradient_mode"] == "jacobian"
    assert config["nonfinite"] == "skip"
    assert loaded.steps_per_execution == 2
    # The compiled metrics come back too, with the same values.
    expected = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    result = loaded.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert result["task_1_mae"] == pytest.approx(expected["task_1_mae"], rel=1e-6)
    # The loaded model skips a non-finite batch instead of raising.
    y_bad = {"task_1": y["task_1"], "task_2": np.full_like(y["task_2"], np.inf)}
    history = loaded.fit(x, y_bad, batch_size=16, verbose=0)
    assert history.history["skipped_steps"] == [1.0]


def test_recompiling_replaces_the_balancer_and_its_variables():
    class Trainable(keras_mtl.balancers.Balancer):
        def build(self, num_tasks):
            super().build(num_tasks)
            self.s = self.add_weight(shape=(num_tasks,), initializer="zeros", name="s")

        def compute(self, jacobian, losses, representation=None):
            return keras_mtl.balancers.BalanceResult(None, keras.ops.exp(-self.s))

    model = build()
    count = len(model.trainable_variables)
    model.compile(optimizer="adam", loss=LOSS, balancer=Trainable(name="trainable_balancer"))
    assert len(model.trainable_variables) == count + 1
    model.compile(optimizer="adam", loss=LOSS, balancer="ew")
    assert len(model.trainable_variables) == count
    assert not any("trainable_balancer" in v.path for v in model.weights)


def test_scoped_jacobian_covers_the_last_shared_layer_only():
    class Scoped(Capture):
        jacobian_scope = "last_shared_layer"

    _fit_checking_the_last_trunk_layer_jacobian(Scoped())


def test_shared_layers_name_the_jacobian_variables_nested_layers_included():
    # Only the trunk's last layer is declared shared, by the name of a layer
    # nested in the SharedBottom: the Jacobian covers its variables alone and
    # the first trunk layer gets the weighted sum of the task gradients.
    model = _fit_checking_the_last_trunk_layer_jacobian(Capture(), shared_layers=["dense_1"])
    assert model.shared_variable_paths == ["trunk/dense_1/kernel", "trunk/dense_1/bias"]


def _fit_checking_the_last_trunk_layer_jacobian(balancer, **compile_kwargs):
    """Fits one step with a `Capture` balancer on a two-layer trunk and checks
    that its Jacobian holds the trunk's last layer only, and that every
    variable takes the brute-force step of the weights [0.3, 0.7]."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,))
    h = keras_mtl.layers.SharedBottom(units=(8, 5), name="trunk")(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs=inputs, outputs={t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=LOSS,
        balancer=balancer,
        run_eagerly=True,
        **compile_kwargs,
    )
    x, y = data(n=16)
    before = [np.array(v) for v in model.trainable_variables]
    expected = brute_force_grads(model, x, y, [0.3, 0.7])
    last = [v for v in model.trainable_variables if v.path.startswith("trunk/dense_1/")]
    rows = []
    for name in TASKS:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True)[name] - y[name]))
        rows.append(np.concatenate([np.ravel(g) for g in tape.gradient(loss, last)]))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(Capture.last[0], np.stack(rows), atol=1e-5)
    for b, v, g in zip(before, model.trainable_variables, expected, strict=True):
        np.testing.assert_allclose(b - np.array(v), np.asarray(g), atol=1e-5)
    return model


@pytest.mark.parametrize("balancer", ["rlw", "pcgrad"])
def test_resume_continues_the_random_draws_of_seeded_balancers(tmp_path, balancer):
    x, y = data(n=64)
    model = build()
    model.compile(optimizer="adam", loss=LOSS, balancer=balancer)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-7)
