"""The `"crossentropy"` / `"ce"` loss alias and loss classes in `compile`.

The alias is the cross-entropy that Keras's `compile` picks from the shapes of
the labels and predictions (keras/src/trainers/compile_utils.py `get_loss`):
it must give the same numbers as the loss it stands for, with missing labels
too, and come back from a `.keras` file as given. A loss class is instantiated,
as `keras.losses.get` does, and saved as that instance.
"""

import keras
import numpy as np
import pytest

import keras_mtl

N = 48
BATCH = 16


def _features():
    return np.random.default_rng(0).normal(size=(N, 6)).astype("float32")


def _classes(x):
    return np.argmax(x[:, :3], axis=1)


# `{case: (alias as written, the loss Keras's rule picks, output width, activation, labels)}`.
CASES = {
    # Predictions of width 1: binary, whatever the labels' rank.
    "binary": (
        "crossentropy",
        "binary_crossentropy",
        1,
        "sigmoid",
        lambda x: (x[:, :1] > 0).astype("float32"),
    ),
    "binary_rank_1_labels": (
        "CE",
        "binary_crossentropy",
        1,
        "sigmoid",
        lambda x: (x[:, 0] > 0).astype("float32"),
    ),
    # Labels of a lower rank than the predictions, or of width 1: sparse.
    "sparse": (
        "ce",
        "sparse_categorical_crossentropy",
        3,
        "softmax",
        lambda x: _classes(x).astype("int32"),
    ),
    "sparse_column": (
        "Crossentropy",
        "sparse_categorical_crossentropy",
        3,
        "softmax",
        lambda x: _classes(x)[:, None].astype("float32"),  # float, so NaN can mark a missing one
    ),
    # Labels as wide as the predictions: categorical.
    "categorical": (
        "CrossEntropy",
        "categorical_crossentropy",
        3,
        "softmax",
        lambda x: np.eye(3, dtype="float32")[_classes(x)],
    ),
}


def _model(heads, cls=keras_mtl.MultiTaskModel):
    """`heads`: `{task: (units, activation)}`, on one shared trunk; the same
    initial weights every time."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh", name="trunk")(inputs)
    outputs = {
        task: keras.layers.Dense(units, activation=activation, name=task)(h)
        for task, (units, activation) in heads.items()
    }
    return cls(inputs=inputs, outputs=outputs)


def _missing(labels):
    """Sample weights and labels with missing labels: a third of the first
    batch, all of the second, and (float labels) NaN for two examples of the
    third."""
    weights = np.ones((N,), "float32")
    weights[0:BATCH:3] = 0.0
    weights[BATCH : 2 * BATCH] = 0.0
    labels = labels.copy()
    if labels.dtype.kind == "f":
        labels[2 * BATCH + 1] = np.nan
        labels[2 * BATCH + 5] = np.nan
    return weights, labels


def _reference_crossentropy(name, labels, probabilities, mask):
    """The mean cross-entropy over the labelled examples, in numpy, as Keras
    computes it from probabilities (clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(probabilities.astype("float64"), 1e-7, 1 - 1e-7)
    labels = np.nan_to_num(labels.astype("float64"))
    if name == "binary_crossentropy":
        y = labels.reshape(p.shape)
        values = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=-1)
    elif name == "sparse_categorical_crossentropy":
        values = -np.log(p[np.arange(len(p)), labels.reshape(-1).astype(int)])
    else:
        values = -np.sum(labels * np.log(p), axis=-1)
    return float(np.sum(values * mask) / np.sum(mask))


def _train_and_evaluate(loss, units, activation, y, sample_weight, initial=None):
    model = _model({"ce": (units, activation), "aux": (1, None)})
    if initial is not None:
        model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss={"ce": loss, "aux": "mse"})
    history = model.fit(
        _features(),
        y,
        sample_weight=sample_weight,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
    )
    evaluation = model.evaluate(
        _features(), y, sample_weight=sample_weight, batch_size=BATCH, verbose=0, return_dict=True
    )
    return model, history.history, evaluation


def _assert_same_logs(got, expected):
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6, err_msg=key)


def _assert_same_weights(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("missing", [False, True], ids=["labelled", "missing_labels"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_crossentropy_alias_trains_and_evaluates_as_the_loss_keras_picks(case, missing):
    alias, name, units, activation, make_labels = CASES[case]
    x = _features()
    labels = make_labels(x)
    weights = None
    if missing:
        weights, labels = _missing(labels)
    y = {"ce": labels, "aux": x[:, 3:4]}
    sample_weight = None if weights is None else {"ce": weights}
    initial = _model({"ce": (units, activation), "aux": (1, None)}).get_weights()

    model, history, evaluation = _train_and_evaluate(
        alias, units, activation, y, sample_weight, initial
    )
    explicit, expected_history, expected_evaluation = _train_and_evaluate(
        name, units, activation, y, sample_weight, initial
    )

    _assert_same_logs(history, expected_history)
    _assert_same_logs(evaluation, expected_evaluation)
    _assert_same_weights(model.get_weights(), explicit.get_weights())
    # It trained (the weights moved) and the loss is the cross-entropy over the
    # labelled examples only.
    kernel = model.get_layer("trunk").kernel
    assert not np.allclose(keras.ops.convert_to_numpy(kernel), initial[0])
    mask = np.ones((N,), "float32") if weights is None else weights
    if labels.dtype.kind == "f":
        mask = mask * ~np.isnan(labels.reshape(N, -1)).any(axis=1)
    probabilities = np.asarray(model.predict(x, verbose=0)["ce"])
    assert evaluation["ce_loss"] == pytest.approx(
        _reference_crossentropy(name, labels, probabilities, mask), rel=1e-5
    )


@pytest.mark.parametrize("case", list(CASES))
def test_the_crossentropy_alias_gives_what_plain_keras_gives(case):
    alias, _, units, activation, make_labels = CASES[case]
    x = _features()
    y = {"ce": make_labels(x), "aux": x[:, 3:4]}
    loss = {"ce": alias, "aux": "mse"}
    heads = {"ce": (units, activation), "aux": (1, None)}
    plain = _model(heads, cls=keras.Model)
    plain.compile(optimizer="sgd", loss=loss)
    ours = _model(heads)
    ours.set_weights(plain.get_weights())
    ours.compile(optimizer="sgd", loss=loss)  # "ew": the sum of the task losses, as Keras
    expected = plain.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    got = ours.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_the_alias_is_chosen_from_the_shapes_of_each_step():
    # Trained with class indices, evaluated with one-hot labels: each gives the
    # loss its labels call for.
    x = _features()
    heads = {"ce": (3, "softmax"), "aux": (1, None)}
    model = _model(heads)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss={"ce": "ce", "aux": "mse"})
    model.fit(x, {"ce": _classes(x), "aux": x[:, 3:4]}, batch_size=BATCH, verbose=0)
    one_hot = {"ce": np.eye(3, dtype="float32")[_classes(x)], "aux": x[:, 3:4]}
    got = model.evaluate(x, one_hot, batch_size=BATCH, verbose=0, return_dict=True)
    explicit = _model(heads)
    explicit.compile(optimizer="sgd", loss={"ce": "categorical_crossentropy", "aux": "mse"})
    explicit.set_weights(model.get_weights())
    expected = explicit.evaluate(x, one_hot, batch_size=BATCH, verbose=0, return_dict=True)
    assert got["ce_loss"] == pytest.approx(expected["ce_loss"], rel=1e-6)
    assert got["ce_loss"] > 0


ROUND_TRIP_HEADS = {
    "binary": (1, "sigmoid"),
    "sparse": (3, "softmax"),
    "categorical": (3, "softmax"),
    "huber": (1, None),
}
ROUND_TRIP_LOSS = {
    "binary": "crossentropy",
    "sparse": "CE",
    "categorical": "ce",
    "huber": keras.losses.Huber,
}
EXPLICIT_LOSS = {
    "binary": "binary_crossentropy",
    "sparse": "sparse_categorical_crossentropy",
    "categorical": "categorical_crossentropy",
    "huber": keras.losses.Huber(),
}


def _round_trip_data():
    x = _features()
    classes = _classes(x)
    y = {
        "binary": (x[:, :1] > 0).astype("float32"),
        "sparse": classes.astype("int32"),
        "categorical": np.eye(3, dtype="float32")[classes],
        "huber": 3.0 * x[:, 3:4],
    }
    sample_weight = {}
    for task in ("binary", "categorical"):
        sample_weight[task], y[task] = _missing(y[task])
    sample_weight["sparse"] = _missing(y["sparse"])[0]
    return x, y, sample_weight


@pytest.mark.parametrize("balancer", ["ew", "pcgrad"])
def test_the_alias_and_a_loss_class_round_trip_through_a_keras_file(tmp_path, balancer):
    x, y, sample_weight = _round_trip_data()
    model = _model(ROUND_TRIP_HEADS)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=ROUND_TRIP_LOSS, balancer=balancer)
    model.fit(
        x, y, sample_weight=sample_weight, batch_size=BATCH, epochs=2, shuffle=False, verbose=0
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)

    # Saved as given: the alias as the string, the class as the instance it made.
    config = loaded.get_compile_config()["loss"]
    assert {t: config[t] for t in ("binary", "sparse", "categorical")} == {
        "binary": "crossentropy",
        "sparse": "CE",
        "categorical": "ce",
    }
    assert config["huber"]["class_name"] == "Huber"
    assert config == model.get_compile_config()["loss"]

    for task in ROUND_TRIP_HEADS:
        np.testing.assert_allclose(
            loaded.predict(x, verbose=0)[task], model.predict(x, verbose=0)[task], rtol=1e-6
        )
    _assert_same_weights(loaded.get_weights(), model.get_weights())
    _assert_same_weights(
        [v.numpy() for v in loaded.optimizer.variables],
        [v.numpy() for v in model.optimizer.variables],
    )

    # The next step is the same, on a batch with missing labels.
    batch = slice(0, BATCH)
    step = (x[batch], {t: v[batch] for t, v in y.items()})
    weights = {t: v[batch] for t, v in sample_weight.items()}
    expected = model.train_on_batch(*step, sample_weight=weights, return_dict=True)
    got = loaded.train_on_batch(*step, sample_weight=weights, return_dict=True)
    _assert_same_logs(got, expected)
    assert all(got[f"{t}_loss"] > 0 for t in ROUND_TRIP_HEADS)
    _assert_same_weights(loaded.get_weights(), model.get_weights())

    # The reloaded model's losses are the explicit ones.
    explicit = _model(ROUND_TRIP_HEADS)
    explicit.compile(optimizer="sgd", loss=EXPLICIT_LOSS, balancer=balancer)
    explicit.set_weights(loaded.get_weights())  # the last task weights too
    expected = explicit.evaluate(
        x, y, sample_weight=sample_weight, batch_size=BATCH, verbose=0, return_dict=True
    )
    got = loaded.evaluate(
        x, y, sample_weight=sample_weight, batch_size=BATCH, verbose=0, return_dict=True
    )
    for task in ROUND_TRIP_HEADS:
        assert got[f"{task}_loss"] == pytest.approx(expected[f"{task}_loss"], rel=1e-6), task


def test_a_loss_class_trains_as_its_instance_and_round_trips(tmp_path):
    x = _features()
    y = {"a": 3.0 * x[:, :1], "b": x[:, 1:2]}
    heads = {"a": (1, None), "b": (1, None)}
    initial = _model(heads).get_weights()
    results = []
    for loss in (keras.losses.Huber, keras.losses.Huber()):
        model = _model(heads)
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss={"a": loss, "b": "mse"})
        history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        results.append((model, history.history))
    (model, history), (instance_model, expected) = results
    _assert_same_logs(history, expected)
    _assert_same_weights(model.get_weights(), instance_model.get_weights())
    # Huber (delta 1) of errors of up to about 9 is not their mean square.
    mse = keras.ops.convert_to_numpy(
        keras.losses.mean_squared_error(y["a"], model.predict(x, verbose=0)["a"])
    ).mean()
    assert model.evaluate(x, y, verbose=0, return_dict=True)["a_loss"] < mse

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_compile_config()["loss"]["a"]["class_name"] == "Huber"
    _assert_same_weights(loaded.get_weights(), model.get_weights())
    step = (x[:BATCH], {t: v[:BATCH] for t, v in y.items()})
    expected = model.train_on_batch(*step, return_dict=True)
    got = loaded.train_on_batch(*step, return_dict=True)
    _assert_same_logs(got, expected)
    _assert_same_weights(loaded.get_weights(), model.get_weights())


@pytest.mark.parametrize(
    "identifier",
    ["crossentropyy", keras.layers.Dense, int],
    ids=["unknown_name", "class_that_cannot_be_made", "class_that_is_no_loss"],
)
def test_an_invalid_loss_names_the_task_the_value_and_what_was_expected(identifier):
    model = _model({"a": (1, None), "b": (1, None)})
    with pytest.raises(ValueError) as info:
        model.compile(optimizer="sgd", loss={"a": "mse", "b": identifier})
    message = str(info.value)
    assert "task 'b'" in message
    assert f"Received: loss={{'b': {identifier!r}}}" in message
    assert "expected a loss name (or 'crossentropy'), function" in message
    assert "keras.losses.Loss instance or class" in message
