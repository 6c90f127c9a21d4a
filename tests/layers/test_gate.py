import keras
import numpy as np
import pytest

from keras_mtl.layers import DSelectK, Gate
from keras_mtl.layers.gate import softmax_last_axis
from tests.layers import reference


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_softmax_of_linear_logits_with_temperature(temperature):
    gate = Gate(
        num_experts=5, temperature=temperature, use_bias=True, kernel_initializer="random_normal"
    )
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    gate.build(x.shape)
    gate.dense.bias.assign(np.linspace(-1, 1, 5).astype("float32"))
    weights = np.asarray(gate(x))
    np.testing.assert_allclose(weights, reference.gate(gate, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    assert (weights >= 0).all()


def test_lower_temperature_sharpens():
    x = np.random.default_rng(1).normal(size=(32, 4)).astype("float32")
    sharp, flat = Gate(4, temperature=0.25), Gate(4, temperature=4.0)
    sharp.build(x.shape)
    flat.build(x.shape)
    flat.set_weights(sharp.get_weights())
    assert np.asarray(sharp(x)).max(-1).mean() > np.asarray(flat(x)).max(-1).mean()


def test_dropout_acts_on_logits_in_training_only():
    gate = Gate(num_experts=6, dropout=0.5, kernel_initializer="ones")
    x = np.ones((64, 3), "float32")
    inference = np.asarray(gate(x))
    np.testing.assert_allclose(inference, 1.0 / 6.0, rtol=1e-6)  # equal logits
    trained = np.asarray(gate(x, training=True))
    np.testing.assert_allclose(trained.sum(-1), 1.0, atol=1e-6)
    # A dropped logit is 0, a kept one 3 / (1 - 0.5) = 6: weights take two values.
    dropped = trained < trained.max(-1, keepdims=True) - 1e-6
    assert 0.2 < dropped.mean() < 0.8
    logits = np.where(dropped, 0.0, 6.0)
    np.testing.assert_allclose(trained, reference.softmax(logits), rtol=1e-5)


def test_kernel_regulariser_penalises_the_gate_kernel():
    gate = Gate(num_experts=3, kernel_regularizer=keras.regularizers.L2(0.1))
    gate.build((None, 4))
    expected = 0.1 * np.sum(np.square(np.asarray(gate.dense.kernel)))
    assert len(gate.losses) == 1
    assert float(gate.losses[0]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_experts": 0}, "num_experts=0"),
        ({"num_experts": 2, "temperature": 0.0}, "temperature=0.0"),
        ({"num_experts": 2, "dropout": -0.1}, "dropout=-0.1"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Gate(**kwargs)


@pytest.mark.parametrize(
    "make", [lambda: Gate(3), lambda: DSelectK(4, k=2)], ids=["softmax", "dselect_k"]
)
def test_empty_batch_gives_empty_weights_in_eager_calls(make):
    gate = make()
    filled = np.asarray(gate(np.ones((2, 5), "float32")))
    empty = gate(np.zeros((0, 5), "float32"))
    assert tuple(empty.shape) == (0, filled.shape[-1])
    assert tuple(gate(np.zeros((0, 7, 5), "float32")).shape) == (0, 7, filled.shape[-1])


def test_softmax_last_axis_is_stable_for_large_logits():
    logits = np.array([[1e4, 1e4, -1e4], [-1e4, 0.0, -1e4], [3e38, 0.0, -3e38]], "float32")
    weights = np.asarray(softmax_last_axis(logits))
    np.testing.assert_allclose(weights, [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
