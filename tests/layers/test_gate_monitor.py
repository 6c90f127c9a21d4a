import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.callbacks import GateMonitor
from keras_mtl.layers import CGC, PLE, MMoE
from tests.layers import reference


def _model(layer, num_tasks=2, d=4, extra_layer=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((d,))
    h = layer(inputs)
    if extra_layer is not None:
        h = extra_layer(h[0])
    outputs = {f"t{t}": keras.layers.Dense(1, name=f"t{t}")(h[t]) for t in range(num_tasks)}
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)
    model.compile(optimizer="adam", loss="mse")
    return model


def _data(n=40, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    return x, {"t0": x[:, :1], "t1": x[:, 1:2]}


def _stats(weights):
    w = np.asarray(weights, "float64")
    return w.mean(0), float((-(w * np.log(w)).sum(-1)).mean())


def test_logs_mean_weights_and_entropy_per_task():
    layer = MMoE(num_tasks=2, num_experts=3, expert_units=(4,), name="mmoe")
    model = _model(layer)
    x, y = _data()
    x_val = x[:25]
    monitor = GateMonitor(x_val, batch_size=10, task_names=["t0", "t1"])
    history = model.fit(x, y, epochs=2, batch_size=20, callbacks=[monitor], verbose=0)
    for t, task in enumerate(["t0", "t1"]):
        mean, entropy = _stats(layer.gate_weights(x_val)[t])
        for i in range(3):
            np.testing.assert_allclose(
                history.history[f"gate/{task}/expert_{i}"][-1], mean[i], rtol=1e-5
            )
        np.testing.assert_allclose(history.history[f"gate/{task}/entropy"][-1], entropy, rtol=1e-5)
        assert 0.0 <= entropy <= np.log(3) + 1e-9
    record = monitor.get_history()
    assert record["t0"]["weights"].shape == (2, 3) and record["t1"]["entropy"].shape == (2,)
    np.testing.assert_allclose(record["t0"]["weights"].sum(-1), 1.0, atol=1e-6)
    assert monitor.epochs == [0, 1]
    assert layer._gate_recorder is None


def _ple_then_mmoe():
    """A PLE whose first task output feeds an MMoE: two gated layers in one model."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    first = PLE(num_tasks=2, num_levels=2, expert_units=(3,), name="ple")
    second = MMoE(num_tasks=2, num_experts=2, expert_units=(3,), name="mmoe")
    h = first(inputs)
    return inputs, first, second, h, second(h[0])


def test_two_gated_layers_are_named_and_tf_data_works():
    inputs, first, second, h, g = _ple_then_mmoe()
    model = keras_mtl.MultiTaskModel(
        inputs=inputs,
        outputs={
            "t0": keras.layers.Dense(1, name="t0")(g[0]),
            "t1": keras.layers.Dense(1, name="t1")(h[1] + g[1]),
        },
    )
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    monitor = GateMonitor(dataset)
    monitor.set_model(model)
    stats = monitor.compute()
    # PLE's own CGC levels are not reported separately; PLE reports its top level.
    assert sorted(stats) == ["mmoe/task_0", "mmoe/task_1", "ple/task_0", "ple/task_1"]
    mean, entropy = _stats(first.gate_weights(x)[1])
    np.testing.assert_allclose(stats["ple/task_1"]["weights"], mean, rtol=1e-5)
    np.testing.assert_allclose(stats["ple/task_1"]["entropy"], entropy, rtol=1e-5)


def test_sequence_inputs_average_over_positions():
    layer = CGC(num_tasks=2, num_shared_experts=1, num_task_experts=2, expert_units=(3,))
    inputs = keras.Input((5, 4))
    h = layer(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(1)(t) for t in h])
    x = np.random.default_rng(2).normal(size=(6, 5, 4)).astype("float32")
    monitor = GateMonitor((x, None), task_names=["a", "b"])
    monitor.set_model(model)
    stats = monitor.compute()
    mean, _ = _stats(np.asarray(layer.gate_weights(x)[0]).reshape(-1, 3))
    np.testing.assert_allclose(stats["a"]["weights"], mean, rtol=1e-5)


def test_errors():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    monitor = GateMonitor(np.ones((2, 4), "float32"))
    monitor.set_model(plain)
    with pytest.raises(ValueError, match="no MMoE, CGC or PLE"):
        monitor.compute()
    model = _model(MMoE(num_tasks=2, num_experts=2, expert_units=(2,)))
    monitor = GateMonitor(np.ones((2, 4), "float32"), task_names=["only_one"])
    monitor.set_model(model)
    with pytest.raises(ValueError, match="task_names"):
        monitor.compute()
    with pytest.raises(ValueError, match="batch_size=0"):
        GateMonitor(np.ones((2, 4)), batch_size=0)
    with pytest.raises(ValueError, match="batch_size=2.0"):
        GateMonitor(np.ones((2, 4)), batch_size=2.0)
    assert type(GateMonitor(np.ones((2, 4)), batch_size=np.int64(2)).batch_size) is int


def test_layers_argument_selects_the_reported_layers():
    inputs, first, second, h, g = _ple_then_mmoe()
    model = keras.Model(inputs, [g[0], h[1] + g[1]])
    x, _ = _data()
    for selection in (["mmoe"], [second]):
        monitor = GateMonitor(x, layers=selection, task_names=["a", "b"])
        monitor.set_model(model)
        stats = monitor.compute()
        # One layer selected: keys are the bare task names, values that layer's gates.
        assert sorted(stats) == ["a", "b"]
        mean, entropy = _stats(second.gate_weights(first(x)[0])[1])
        np.testing.assert_allclose(stats["b"]["weights"], mean, rtol=1e-5)
        np.testing.assert_allclose(stats["b"]["entropy"], entropy, rtol=1e-5)
    # A single name is one layer, not a sequence of letters.
    monitor = GateMonitor(x, layers="mmoe", task_names=["a", "b"])
    monitor.set_model(model)
    assert sorted(monitor.compute()) == ["a", "b"]
    # A misspelt name is an error (before training), not silently dropped.
    monitor = GateMonitor(x, layers=["mmoe", "pel"])
    monitor.set_model(model)
    message = r"`layers`.*\['ple', 'mmoe'\].*layers=\['mmoe', 'pel'\].*\['pel'\] match none"
    with pytest.raises(ValueError, match=message):
        monitor.on_train_begin()
    with pytest.raises(ValueError, match=message):
        monitor.compute()


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda: MMoE(num_tasks=2, num_experts=3, expert_units=(3,)),
        lambda: CGC(num_tasks=2, num_shared_experts=1, num_task_experts=2, expert_units=(3,)),
        lambda: PLE(num_tasks=2, num_levels=2, num_task_experts=2, expert_units=(3,)),
    ],
    ids=["mmoe", "cgc", "ple"],
)
def test_padded_positions_are_left_out(make_layer):
    # Built after the seed is set: initializers draw their seeds when the layer is made,
    # so a layer made at collection would depend on which tests were collected before.
    keras.utils.set_random_seed(3)
    layer = make_layer()
    inputs = keras.Input((5, 4))
    h = layer(keras.layers.Masking(0.0)(inputs))
    pooled = [keras.layers.GlobalAveragePooling1D()(t) for t in h]
    model = keras.Model(inputs, [keras.layers.Dense(1)(p) for p in pooled])
    # Large inputs make the real positions' gates far from the uniform gate of a zero input.
    x = 10 * np.random.default_rng(4).normal(size=(6, 5, 4)).astype("float32")
    lengths = np.array([5, 1, 2, 3, 4, 2])
    x[np.arange(5)[None, :] >= lengths[:, None]] = 0.0  # padding at the end
    monitor = GateMonitor(x, batch_size=4, task_names=["a", "b"])
    monitor.set_model(model)
    stats = monitor.compute()
    keep = np.arange(5)[None, :] < lengths[:, None]
    for t, task in enumerate(["a", "b"]):
        weights = np.asarray(layer.gate_weights(x)[t])
        mean, entropy = _stats(weights[keep])
        np.testing.assert_allclose(stats[task]["weights"], mean, rtol=1e-5)
        np.testing.assert_allclose(stats[task]["entropy"], entropy, rtol=1e-5)
        # The padded positions' gates differ, so counting them would move the mean.
        assert np.abs(weights.reshape(-1, weights.shape[-1]).mean(0) - mean).max() > 5e-3
    empty = GateMonitor(np.zeros((2, 5, 4), "float32"), task_names=["a", "b"])
    empty.set_model(model)
    with pytest.raises(ValueError, match="no unpadded position"):
        empty.compute()


def test_cgc_list_input_uses_each_task_inputs_mask():
    keras.utils.set_random_seed(5)
    inputs = [keras.Input((4, 3)) for _ in range(3)]
    layer = CGC(num_tasks=2, num_shared_experts=1, num_task_experts=1, expert_units=(2,))
    h = layer([keras.layers.Masking(0.0)(i) for i in inputs])
    model = keras.Model(inputs, [keras.layers.GlobalAveragePooling1D()(t) for t in h])
    rng = np.random.default_rng(6)
    xs = [rng.normal(size=(3, 4, 3)).astype("float32") for _ in range(3)]
    xs[0][:, 2:] = 0.0  # task a: two valid positions
    xs[1][:, 1:] = 0.0  # task b: one valid position
    monitor = GateMonitor(xs, task_names=["a", "b"])
    monitor.set_model(model)
    stats = monitor.compute()
    weights = layer.gate_weights(xs)
    np.testing.assert_allclose(
        stats["a"]["weights"], _stats(np.asarray(weights[0])[:, :2].reshape(-1, 2))[0], rtol=1e-5
    )
    np.testing.assert_allclose(
        stats["b"]["weights"], _stats(np.asarray(weights[1])[:, :1].reshape(-1, 2))[0], rtol=1e-5
    )


def test_dselect_k_entropy_is_that_of_the_renormalised_weights():
    # Three experts, two code bits: at initialisation the selectors spread mass over
    # all four codes, so the weights of the three experts sum to about 0.75.
    layer = MMoE(
        num_tasks=2, num_experts=3, expert_units=(3,), gate="dselect_k", gate_kwargs={"k": 2}
    )
    model = _model(layer)
    x, _ = _data()
    monitor = GateMonitor(x, task_names=["t0", "t1"])
    monitor.set_model(model)
    stats = monitor.compute()
    w = np.asarray(layer.gate_weights(x)[0], "float64")
    assert w.sum(-1).max() < 0.9
    p = w / w.sum(-1, keepdims=True)
    np.testing.assert_allclose(stats["t0"]["weights"], w.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["t0"]["entropy"], _stats(p)[1], rtol=1e-5)


def test_statistics_are_those_of_inference_with_the_prefix_given():
    # Gate dropout would make training-mode weights random: the monitor (and
    # `gate_weights`, its reference here) must use the inference weights,
    # which are the NumPy softmax of the gate logits.
    layer = MMoE(
        num_tasks=2, num_experts=3, expert_units=(4,), gate_kwargs={"dropout": 0.5}, name="mmoe"
    )
    model = _model(layer)
    x, _ = _data()
    monitor = GateMonitor(x, task_names=["t0", "t1"], prefix="moe")
    logs = {}
    monitor.set_model(model)
    monitor.on_epoch_end(0, logs)
    assert sorted(logs) == sorted(
        [f"moe/{t}/expert_{i}" for t in ("t0", "t1") for i in range(3)]
        + ["moe/t0/entropy", "moe/t1/entropy"]
    )
    for t, (task, gate) in enumerate(zip(["t0", "t1"], layer.gates, strict=True)):
        expected = reference.gate(gate, x)
        np.testing.assert_allclose(np.asarray(layer.gate_weights(x)[t]), expected, rtol=1e-5)
        mean, entropy = _stats(expected)
        got = [logs[f"moe/{task}/expert_{i}"] for i in range(3)]
        np.testing.assert_allclose(got, mean, rtol=1e-5)
        assert logs[f"moe/{task}/entropy"] == pytest.approx(entropy, rel=1e-5)


def test_a_layer_called_twice_is_refused():
    # One MMoE on two inputs: each call has its own gates, and head t1 reads
    # the second call, so reporting one call would misattribute the weights.
    keras.utils.set_random_seed(7)
    u, v = keras.Input((4,)), keras.Input((4,))
    layer = MMoE(num_tasks=2, num_experts=3, expert_units=(4,), name="mmoe")
    hu, hv = layer(u), layer(v)
    model = keras.Model([u, v], [keras.layers.Dense(1)(hu[0]), keras.layers.Dense(1)(hv[1])])
    x, _ = _data()
    monitor = GateMonitor([x, 5 * x + 3], task_names=["t0", "t1"])
    monitor.set_model(model)
    with pytest.raises(ValueError, match="layer 'mmoe' ran 2 times.*one layer per call site"):
        monitor.compute()
    assert layer._gate_recorder is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"validation_data": None}, "validation_data=None"),
        ({"validation_data": (b for b in [np.ones((2, 4))])}, "validation_data=<generator"),
        ({"validation_data": [np.ones((2, 4)), np.ones((3, 4))]}, r"\[2, 3\] examples"),
        ({"task_names": "ab"}, "task_names='ab'"),
        ({"task_names": ["a", "a"]}, r"task_names=\['a', 'a'\]"),
        ({"layers": 3}, "layers=3"),
        ({"layers": []}, r"layers=\[\]"),
        ({"layers": ["mmoe", None]}, r"layers=\['mmoe', None\]"),
        ({"prefix": None}, "prefix=None"),
        ({"prefix": ""}, "prefix=''"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, message):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"invalid value for `{name}`.*{message}"):
        GateMonitor(**{"validation_data": np.ones((2, 4), "float32"), **kwargs})
