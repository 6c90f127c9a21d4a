import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.layers import ESMM


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _tower(bottom, head, h):
    for dense in bottom.dense_layers:
        h = np.maximum(h @ np.asarray(dense.kernel, "float64") + np.asarray(dense.bias), 0.0)
    return _sigmoid(h @ np.asarray(head.kernel, "float64") + np.asarray(head.bias))


def test_ctcvr_is_ctr_times_cvr():
    layer = ESMM(tower_units=(6, 3), shared_units=(5,), return_cvr=True)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    out = {k: np.asarray(v, "float64") for k, v in layer(x).items()}
    shared = np.maximum(
        x @ np.asarray(layer.trunk.dense_layers[0].kernel, "float64")
        + np.asarray(layer.trunk.dense_layers[0].bias),
        0.0,
    )
    ctr = _tower(layer.ctr_tower, layer.ctr_head, shared)
    cvr = _tower(layer.cvr_tower, layer.cvr_head, shared)
    np.testing.assert_allclose(out["ctr"], ctr, rtol=1e-5)
    np.testing.assert_allclose(out["cvr"], cvr, rtol=1e-5)
    np.testing.assert_allclose(out["ctcvr"], ctr * cvr, rtol=1e-5)
    np.testing.assert_allclose(out["ctcvr"], out["ctr"] * out["cvr"], rtol=1e-6)
    # The towers do not share weights.
    assert not np.allclose(np.asarray(layer.ctr_head.kernel), np.asarray(layer.cvr_head.kernel))


def test_labels_over_the_entire_space():
    labels = ESMM.labels(click=[1, 1, 0, 0], conversion=[1, 0, 0, 0])
    np.testing.assert_array_equal(labels["ctr"].ravel(), [1, 1, 0, 0])
    np.testing.assert_array_equal(labels["ctcvr"].ravel(), [1, 0, 0, 0])
    assert labels["ctr"].shape == (4, 1) and labels["ctr"].dtype == np.float32
    # A conversion logged without a click (inconsistent logs) is no click-and-convert.
    labels = ESMM.labels(click=[1, 1, 0, 0], conversion=[1, 0, 1, 0])
    np.testing.assert_array_equal(labels["ctcvr"].ravel(), [1, 0, 0, 0])


def test_multi_task_model_losses_use_the_paper_labels():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 5)).astype("float32")
    click = (rng.random(64) < 0.4).astype("float32")
    conversion = click * (rng.random(64) < 0.5)
    inputs = keras.Input((5,))
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=ESMM(tower_units=(8,))(inputs))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    labels = ESMM.labels(click, conversion)
    history = model.fit(x, labels, epochs=2, batch_size=32, verbose=0)
    assert np.isfinite(history.history["ctcvr_loss"]).all()
    pred = model.predict(x, verbose=0)
    result = model.evaluate(x, labels, batch_size=64, verbose=0, return_dict=True)

    def bce(y, p):
        p = np.clip(p.astype("float64"), 1e-7, 1 - 1e-7)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

    np.testing.assert_allclose(result["ctr_loss"], bce(labels["ctr"], pred["ctr"]), rtol=1e-4)
    np.testing.assert_allclose(result["ctcvr_loss"], bce(labels["ctcvr"], pred["ctcvr"]), rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tower_units": ()}, r"tower_units=\(\)"),
        ({"shared_units": [0]}, r"shared_units=\[0\]"),
        ({"dropout": 2.0}, "dropout=2.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ESMM(**kwargs)
