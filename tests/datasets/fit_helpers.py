"""A tiny shared-bottom multi-task model to check that loader output trains end to end."""

import keras
import numpy as np

import keras_mtl


def fit_tiny(x, y, losses, batch_size=64, balancer="ew", inputs=None, trunk=None):
    """Fits one epoch of a small shared-bottom model; returns the history dict.

    `inputs`/`trunk` override the default flat input and MLP trunk (for dict
    or image inputs).
    """
    keras.utils.set_random_seed(0)
    if inputs is None:
        inputs = keras.Input(x.shape[1:])
        h = inputs
    else:
        h = trunk(inputs)
    h = keras_mtl.layers.SharedBottom(units=(16,), name="trunk")(h)
    outputs = {}
    for task, loss in losses.items():
        if loss == "sparse_categorical_crossentropy":
            outputs[task] = keras.layers.Dense(10, activation="softmax", name=task)(h)
        elif loss == "binary_crossentropy":
            outputs[task] = keras.layers.Dense(1, activation="sigmoid", name=task)(h)
        else:
            outputs[task] = keras.layers.Dense(1, name=task)(h)
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)
    model.compile(optimizer="adam", loss=losses, balancer=balancer)
    if batch_size is None:  # x is a batched tf.data.Dataset
        history = model.fit(x, epochs=1, verbose=0, shuffle=False)
    else:
        history = model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
    for key, values in history.history.items():
        assert np.isfinite(values).all(), (key, values)
    return history.history
