import keras
import numpy as np
import pytest

from keras_mtl.layers import CustomizedSharing
from tests.layers import reference


def test_concatenates_own_then_shared_experts():
    layer = CustomizedSharing(
        num_tasks=3, num_shared_experts=2, num_task_experts=[1, 2, 3], expert_units=(4, 2)
    )
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    outputs = layer(x)
    shared = reference.expert_bank(layer.shared_experts, x)
    for t, out in enumerate(outputs):
        own = reference.expert_bank(layer.task_experts[t], x)
        expected = np.concatenate([own, shared], axis=1).reshape(5, -1)
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)
    assert [tuple(o.shape) for o in outputs] == [(5, 6), (5, 8), (5, 10)]


def test_has_no_gates():
    layer = CustomizedSharing(num_tasks=2, expert_units=(3,))
    layer.build((None, 4))
    # Two task banks and one shared bank, each a kernel and a bias.
    assert len(layer.weights) == 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_tasks": 2, "num_task_experts": [1]}, r"num_task_experts=\[1\]"),
        ({"num_tasks": 2, "num_shared_experts": 0}, "num_shared_experts=0"),
        ({"num_tasks": -1}, "num_tasks=-1"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CustomizedSharing(**kwargs)


def test_list_input_is_refused_with_a_clear_error():
    layer = CustomizedSharing(num_tasks=2, expert_units=3, name="cs")
    message = r"`CustomizedSharing` \(layer 'cs'\) expects one input tensor.*a list of 3 inputs"
    with pytest.raises(ValueError, match=message):
        layer([keras.Input((5,))] * 3)  # first call: in build
    layer(np.ones((1, 5), "float32"))
    with pytest.raises(ValueError, match=message):
        layer([np.ones((1, 5), "float32")] * 3)  # built: in call
