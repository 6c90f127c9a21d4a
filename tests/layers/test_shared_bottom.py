import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.layers import SharedBottom, SharedRepresentation


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5)])
def test_any_input_rank(shape):
    layer = SharedBottom(units=(7, 4))
    out = layer(np.ones((2, *shape), "float32"))
    assert tuple(out.shape) == (2, *shape[:-1], 4)
    assert layer.compute_output_shape((None, *shape)) == (None, *shape[:-1], 4)


def test_matches_a_stack_of_dense_layers():
    layer = SharedBottom(units=(6, 3), activation="tanh")
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    out = np.asarray(layer(x))
    k0, b0, k1, b1 = (np.asarray(w) for w in layer.weights)
    np.testing.assert_allclose(out, np.tanh(np.tanh(x @ k0 + b0) @ k1 + b1), rtol=1e-5, atol=1e-6)


def test_batch_norm_and_dropout_are_training_aware():
    layer = SharedBottom(units=(8,), batch_norm=True, dropout=0.5)
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    np.testing.assert_array_equal(
        np.asarray(layer(x, training=False)), np.asarray(layer(x, training=False))
    )
    assert not np.allclose(
        np.asarray(layer(x, training=True)), np.asarray(layer(x, training=False))
    )
    assert len(layer.non_trainable_weights) >= 2  # moving mean and variance


def test_batch_norm_uses_batch_statistics_in_training_and_moving_ones_in_inference():
    # No dropout, so only batch normalisation can tell training from inference.
    layer = SharedBottom(units=(6, 4), activation="tanh", batch_norm=True, dropout=0.0)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 5)).astype("float32")
    layer.build(x.shape)
    # Non-trivial gamma, beta and moving statistics, far from the batch's own.
    for norm in layer.norm_layers:
        n = norm.gamma.shape[0]
        norm.gamma.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
        norm.beta.assign(rng.normal(size=n).astype("float32"))
        norm.moving_mean.assign(rng.normal(size=n).astype("float32"))
        norm.moving_variance.assign(rng.uniform(0.5, 3.0, n).astype("float32"))

    def reference(training):
        h = x.astype("float64")
        for dense, norm in zip(layer.dense_layers, layer.norm_layers, strict=True):
            assert dense.bias is None  # batch norm's beta replaces the bias
            h = h @ np.asarray(dense.kernel, "float64")
            if training:
                mean, var = h.mean(axis=0), h.var(axis=0)  # biased variance
            else:
                mean = np.asarray(norm.moving_mean, "float64")
                var = np.asarray(norm.moving_variance, "float64")
            gamma, beta = np.asarray(norm.gamma, "float64"), np.asarray(norm.beta, "float64")
            h = np.tanh(gamma * (h - mean) / np.sqrt(var + norm.epsilon) + beta)
        return h

    expected_inference = reference(training=False)
    np.testing.assert_allclose(
        np.asarray(layer(x, training=False)), expected_inference, rtol=1e-4, atol=1e-5
    )
    expected_training = reference(training=True)
    assert not np.allclose(expected_training, expected_inference, atol=1e-2)
    np.testing.assert_allclose(
        np.asarray(layer(x, training=True)), expected_training, rtol=1e-4, atol=1e-5
    )


def test_config_round_trip_and_keras_save(tmp_path):
    layer = SharedBottom(
        units=(6, 3), activation="gelu", dropout=0.1, batch_norm=True, kernel_regularizer="l2"
    )
    again = SharedBottom.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    inputs = keras.Input((5,))
    h = SharedRepresentation()(SharedBottom(units=(6,), kernel_regularizer="l2")(inputs))
    model = keras_mtl.MultiTaskModel(
        inputs=inputs,
        outputs={"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(1, name="b")(h)},
    )
    model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"})
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    model.fit(x, {"a": x[:, :1], "b": x[:, 1:2]}, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for name in ("a", "b"):
        np.testing.assert_allclose(
            loaded.predict(x, verbose=0)[name], model.predict(x, verbose=0)[name], rtol=1e-6
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"units": 0}, "units=0"),
        ({"units": ()}, r"units=\(\)"),
        ({"units": (4, -1)}, r"units=\(4, -1\)"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"units": None}, r"`units`, expected .*Received: units=None"),
        ({"units": 2.0}, "units=2.0"),
        ({"units": (4, 4), "dropout": [0.1]}, r"`dropout`, expected .*Received: dropout=\[0.1\]"),
        ({"batch_norm": "yes"}, r"`batch_norm`, expected a bool. Received: batch_norm='yes'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SharedBottom(**kwargs)


def test_shared_representation_is_identity():
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(SharedRepresentation()(x)), x)


def test_equally_shaped_layers_start_with_different_kernels():
    layer = SharedBottom(units=(5, 5, 5))
    layer.build((None, 5))
    kernels = [np.asarray(d.kernel) for d in layer.dense_layers]
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])


def test_regularization_losses_enter_the_objective():
    inputs = keras.Input((5,))
    h = SharedBottom(units=(4,), kernel_regularizer=keras.regularizers.L2(0.5), name="bottom")(
        inputs
    )
    model = keras_mtl.MultiTaskModel(
        inputs=inputs,
        outputs={"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(1, name="b")(h)},
    )
    model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"})
    x = np.random.default_rng(2).normal(size=(8, 5)).astype("float32")
    y = {"a": x[:, :1], "b": x[:, 1:2]}
    result = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    kernel = np.asarray(model.get_layer("bottom").dense_layers[0].kernel)
    expected = result["a_loss"] + result["b_loss"] + 0.5 * np.sum(kernel**2)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


def test_padding_mask_passes_through_to_a_masked_average():
    tokens = np.array([[4, 2, 0], [1, 0, 0]], "int32")
    inputs = keras.Input((3,), dtype="int32")
    embedding = keras.layers.Embedding(6, 4, mask_zero=True)
    layer = SharedBottom(units=(5,))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(layer(embedding(inputs))))
    values = np.asarray(layer(np.asarray(embedding(tokens))), "float64")
    mask = (tokens != 0).astype("float64")[..., None]
    expected = (values * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(np.asarray(model(tokens)), expected, rtol=1e-5, atol=1e-6)


def test_batch_norm_statistics_leave_out_padded_positions():
    # Training-mode batch normalisation of a padded sequence batch equals that
    # of the unpadded positions alone, whatever the padding holds.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    valid = np.array([[True, True, False], [True, False, False]])
    x[~valid] = 1e3 * rng.normal(size=(int((~valid).sum()), 4))
    layer, flat = (
        SharedBottom(units=(5, 3), batch_norm=True),
        SharedBottom(units=(5, 3), batch_norm=True),
    )
    layer.build((None, 3, 4))
    flat.build((None, 4))
    flat.set_weights(layer.get_weights())
    padded = layer(x, training=True, mask=valid)
    alone = flat(x[valid], training=True)
    np.testing.assert_allclose(np.asarray(padded)[valid], alone, rtol=1e-4, atol=1e-5)
    # The moving statistics too.
    for a, b in zip(layer.non_trainable_weights, flat.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
