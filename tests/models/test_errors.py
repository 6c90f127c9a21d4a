import keras
import numpy as np
import pytest

import keras_mtl
from tests.models.helpers import NormalizedEMA, build, data

LOSS = {"task_1": "mse", "task_2": "mse"}


def test_loss_keys_that_do_not_match_the_outputs_list_both():
    model = build()
    with pytest.raises(
        ValueError,
        match=r"Task outputs: \['task_1', 'task_2'\]\. Received keys: "
        r"\['task_1', 'income'\]",
    ):
        model.compile(optimizer="sgd", loss={"task_1": "mse", "income": "mse"})


def test_outputs_must_be_a_dict():
    x = keras.Input((3,))
    with pytest.raises(ValueError, match="Expected `outputs` to be a non-empty dict.*list"):
        keras_mtl.MultiTaskModel(inputs=x, outputs=[keras.layers.Dense(1)(x)])


def test_a_task_without_labels_is_named():
    x, y = data(n=16)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(ValueError, match=r"no labels for \['task_2'\]"):
        model.fit(x, {"task_1": y["task_1"]}, verbose=0)
    with pytest.raises(ValueError, match="Expected `y` to be a dict"):
        model.fit(x, y["task_1"], verbose=0)


def test_unknown_balancer_lists_the_valid_names():
    model = build()
    with pytest.raises(ValueError, match=r"balancer='nope'.*") as info:
        model.compile(optimizer="sgd", loss=LOSS, balancer="nope")
    assert "'ew'" in str(info.value) and "'fixed'" in str(info.value)


def test_gradient_balancer_without_shared_variables():
    x, y = data(n=16)
    inputs = keras.Input((6,))
    outputs = {t: keras.layers.Dense(1, name=t)(inputs) for t in ("task_1", "task_2")}
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)
    model.compile(optimizer="sgd", loss=LOSS, balancer=NormalizedEMA())
    with pytest.raises(
        ValueError, match="no trainable variable receives gradient from more than one"
    ):
        model.fit(x, y, verbose=0)


def test_sample_weight_of_the_wrong_shape():
    x, y = data(n=16)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    bad = {"task_1": np.ones((16, 3), "float32"), "task_2": np.ones((16,), "float32")}
    with pytest.raises(ValueError, match=r"sample_weight` for task 'task_1'.*\(16, 3\)"):
        model.fit(x, y, sample_weight=bad, batch_size=16, verbose=0)


def test_invalid_compile_options():
    model = build()
    with pytest.raises(ValueError, match="gradient_mode='fast'"):
        model.compile(optimizer="sgd", loss=LOSS, gradient_mode="fast")
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        model.compile(optimizer="sgd", loss=LOSS, nonfinite="ignore")
    with pytest.raises(ValueError, match="SharedRepresentation"):
        model.compile(
            optimizer="sgd", loss=LOSS, balancer=NormalizedEMA(), gradient_mode="representation"
        )
        model.fit(*data(n=8), verbose=0)
