import json

import keras
import numpy as np
import pytest

from keras_mtl.layers import MMoE, SharedBottom
from tests.layers import reference


def test_matches_numpy_mixture_of_experts():
    layer = MMoE(num_tasks=3, num_experts=4, expert_units=(5, 3), return_gate_weights=True)
    x = np.random.default_rng(0).normal(size=(6, 7)).astype("float32")
    outputs, weights = layer(x)
    experts = reference.expert_bank(layer.experts, x)
    for t in range(3):
        w = reference.gate(layer.gates[t], x)
        np.testing.assert_allclose(np.asarray(weights[t]), w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(weights[t]).sum(-1), 1.0, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(outputs[t]), reference.mix(w, experts), rtol=1e-4, atol=1e-5
        )
    # Different gates give the tasks different mixtures.
    assert not np.allclose(np.asarray(outputs[0]), np.asarray(outputs[1]))


def test_one_expert_equals_a_shared_bottom_with_the_same_weights():
    layer = MMoE(num_tasks=2, num_experts=1, expert_units=(6, 3))
    bottom = SharedBottom(units=(6, 3))
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    layer(x)
    bottom(x)
    bank = layer.experts
    for i, dense in enumerate(bottom.dense_layers):
        bank.kernels[i].assign(np.asarray(dense.kernel)[:, None, :])
        bank.biases[i].assign(np.random.default_rng(i).normal(size=(1, dense.units)))
        dense.bias.assign(np.asarray(bank.biases[i])[0])
    expected = np.asarray(bottom(x))
    for out in layer(x):
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)


def test_one_gate_is_the_omoe_baseline():
    layer = MMoE(num_tasks=1, num_experts=3, expert_units=4)
    x = np.random.default_rng(4).normal(size=(6, 5)).astype("float32")
    outputs = layer(x)
    assert isinstance(outputs, list) and len(outputs) == 1
    w = reference.gate(layer.gates[0], x)
    expected = reference.mix(w, reference.expert_bank(layer.experts, x))
    np.testing.assert_allclose(np.asarray(outputs[0]), expected, rtol=1e-4, atol=1e-5)


def test_dselect_k_gate():
    layer = MMoE(
        num_tasks=2,
        num_experts=4,
        expert_units=(3,),
        gate="dselect_k",
        gate_kwargs={"k": 2, "entropy_reg": 0.5},
        return_gate_weights=True,
    )
    x = np.random.default_rng(2).normal(size=(5, 6)).astype("float32")
    outputs, weights = layer(x, training=True)
    experts = reference.expert_bank(layer.experts, x)
    for t in range(2):
        w, _ = reference.dselect_k(layer.gates[t], x)
        np.testing.assert_allclose(np.asarray(weights[t]), w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(outputs[t]), reference.mix(w, experts), rtol=1e-4, atol=1e-5
        )
    assert len(layer.losses) == 2  # one entropy term per gate


def test_gate_options_reach_the_gates():
    layer = MMoE(num_tasks=2, num_experts=3, gate_kwargs={"temperature": 2.0, "dropout": 0.1})
    assert all(g.temperature == 2.0 and g.dropout == 0.1 for g in layer.gates)


def test_user_supplied_expert_layer():
    layer = MMoE(num_tasks=2, num_experts=3, expert=keras.layers.Dense(4, activation="tanh"))
    x = np.random.default_rng(3).normal(size=(5, 6)).astype("float32")
    outputs = layer(x)
    experts = np.stack(
        [np.tanh(x @ np.asarray(e.kernel) + np.asarray(e.bias)) for e in layer.experts.experts], 1
    )
    for t in range(2):
        w = reference.gate(layer.gates[t], x)
        np.testing.assert_allclose(
            np.asarray(outputs[t]), reference.mix(w, experts), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_tasks": 2, "num_experts": 0}, "num_experts=0"),
        ({"num_tasks": 0, "num_experts": 2}, "num_tasks=0"),
        ({"num_tasks": 2, "num_experts": 2, "gate": "topk"}, "gate='topk'"),
        ({"num_tasks": 2, "num_experts": 2, "gate": "dselect_k"}, "gate_kwargs=None"),
        ({"num_tasks": 2, "num_experts": 3, "gate": "dselect_k", "gate_kwargs": {"k": 4}}, "k=4"),
        ({"num_tasks": 2, "num_experts": 2, "expert_dropout": 1.0}, "expert_dropout=1.0"),
        (
            {"num_tasks": 2, "num_experts": 2, "expert_units": (-4,)},
            r"`expert_units`.*expert_units=\(-4,\)",
        ),
        ({"num_tasks": 2, "num_experts": 2.0}, "num_experts=2.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MMoE(**kwargs)


def test_gate_weights_as_functional_outputs():
    inputs = keras.Input((5,))
    outputs, weights = MMoE(num_tasks=2, num_experts=3, expert_units=4, return_gate_weights=True)(
        inputs
    )
    assert [tuple(w.shape) for w in weights] == [(None, 3), (None, 3)]
    model = keras.Model(inputs, weights)
    predicted = model.predict(np.random.default_rng(4).normal(size=(6, 5)), verbose=0)
    for w in predicted:
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)


def test_empty_batch_in_eager_calls():
    layer = MMoE(num_tasks=2, num_experts=3, expert_units=4, return_gate_weights=True)
    outputs, weights = layer(np.zeros((0, 5), "float32"))
    assert [tuple(t.shape) for t in outputs] == [(0, 4), (0, 4)]
    assert [tuple(w.shape) for w in weights] == [(0, 3), (0, 3)]


def test_list_input_is_refused_with_a_clear_error():
    layer = MMoE(num_tasks=2, num_experts=2, expert_units=3, name="mmoe")
    message = r"`MMoE` \(layer 'mmoe'\) expects one input tensor.*a list of 2 inputs.*`CGC`"
    with pytest.raises(ValueError, match=message):
        layer([keras.Input((5,)), keras.Input((5,))])  # first call: in build
    layer(np.ones((1, 5), "float32"))
    with pytest.raises(ValueError, match=message):
        layer([np.ones((1, 5), "float32")] * 2)  # built: in call


def test_numpy_scalars_in_gate_kwargs_give_a_json_config():
    layer = MMoE(2, 4, expert_units=(3,), gate="dselect_k", gate_kwargs={"k": np.int64(2)})
    config = json.loads(json.dumps(layer.get_config()))
    assert config["gate_kwargs"] == {"k": 2}


@pytest.mark.parametrize("key", ["num_experts", "name", "dtype"])
def test_gate_kwargs_cannot_repeat_what_the_layer_sets(key):
    value = {"num_experts": 4, "name": "g", "dtype": "float32"}[key]
    with pytest.raises(ValueError, match=rf"`gate_kwargs`.*\['{key}'\].*gate_kwargs=\{{'{key}'"):
        MMoE(num_tasks=2, num_experts=2, gate_kwargs={key: value})
