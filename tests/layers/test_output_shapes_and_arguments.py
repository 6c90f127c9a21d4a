"""Output shapes and specs of the mixture layers, `gate_kwargs` validation,
experts that drop an axis, ESMM input checks and GateMonitor's early checks."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.callbacks import GateMonitor, gate_monitor
from keras_mtl.layers import CGC, ESMM, PLE, CustomizedSharing, ExpertBank, MMoE

LAYERS = {
    "mmoe": lambda: MMoE(num_tasks=2, num_experts=3, expert_units=(4,)),
    "mmoe_weights_dselect_k": lambda: MMoE(
        num_tasks=3,
        num_experts=5,
        expert_units=(6, 4),
        gate="dselect_k",
        gate_kwargs={"k": 2},
        return_gate_weights=True,
    ),
    "cgc": lambda: CGC(num_tasks=2, num_shared_experts=2, num_task_experts=[1, 3], expert_units=4),
    "cgc_shared_weights": lambda: CGC(
        num_tasks=2,
        num_shared_experts=1,
        num_task_experts=[2, 1],
        expert_units=(4,),
        shared_output=True,
        return_gate_weights=True,
    ),
    "ple": lambda: PLE(num_tasks=3, num_levels=2, expert_units=(4,)),
    "ple_one_level_weights": lambda: PLE(
        num_tasks=2, num_levels=1, num_task_experts=[1, 2], expert_units=3, return_gate_weights=True
    ),
    "esmm": lambda: ESMM(tower_units=(4,)),
    "esmm_cvr_trunk": lambda: ESMM(tower_units=(4,), shared_units=(5,), return_cvr=True),
}


def _shapes(result):
    """The shapes of a layer's outputs, in the same structure."""
    if isinstance(result, dict):
        return {key: _shapes(value) for key, value in result.items()}
    if isinstance(result, list):
        return [_shapes(value) for value in result]
    if isinstance(result, tuple) and not all(d is None or isinstance(d, int) for d in result):
        return tuple(_shapes(value) for value in result)
    if isinstance(result, tuple):
        return result
    return tuple(result.shape)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("leading", [(), (3,)], ids=["tabular", "sequence"])
def test_compute_output_shape_is_that_of_the_call(name, leading):
    layer = LAYERS[name]()
    x = np.random.default_rng(0).normal(size=(2, *leading, 5)).astype("float32")
    symbolic = layer(keras.Input((*leading, 5)))
    eager = layer(x)
    assert _shapes(layer.compute_output_shape((None, *leading, 5))) == _shapes(symbolic)
    assert _shapes(layer.compute_output_shape((2, *leading, 5))) == _shapes(eager)
    # An unbuilt layer gives the same answer.
    fresh = LAYERS[name]()
    assert _shapes(fresh.compute_output_shape((None, *leading, 5))) == _shapes(symbolic)


def test_cgc_compute_output_shape_with_one_input_per_task():
    layer = CGC(2, num_shared_experts=1, num_task_experts=1, expert_units=4, shared_output=True)
    widths = (3, 5, 7)
    symbolic = layer([keras.Input((w,)) for w in widths])
    eager = layer([np.ones((2, w), "float32") for w in widths])
    assert layer.compute_output_shape([(None, w) for w in widths]) == _shapes(symbolic)
    assert layer.compute_output_shape([(2, w) for w in widths]) == _shapes(eager)


@pytest.mark.parametrize(
    "build",
    [
        lambda **kw: MMoE(2, 3, expert_units=4, return_gate_weights=True, **kw),
        lambda **kw: CGC(2, 1, [1, 2], expert_units=4, shared_output=True, **kw),
        lambda **kw: PLE(2, 2, expert_units=4, return_gate_weights=True, **kw),
        lambda **kw: ExpertBank(2, units=4, **kw),
        lambda **kw: CustomizedSharing(2, expert_units=4, **kw),
    ],
    ids=["mmoe", "cgc", "ple", "expert_bank", "customized_sharing"],
)
@pytest.mark.parametrize("user_expert", [False, True], ids=["mlp", "float32_expert"])
def test_symbolic_dtypes_are_those_of_the_call_under_mixed_precision(build, user_expert):
    # A float32 user expert in a mixed_float16 layer computes in float32; the
    # gate weights are float32 in any case.
    kwargs = {"dtype": "mixed_float16"}
    if user_expert:
        kwargs["expert"] = keras.layers.Dense(3, dtype="float32")
    layer = build(**kwargs)
    symbolic = layer(keras.Input((5,)))
    eager = layer(np.ones((2, 5), "float32"))
    to_dtypes = lambda r: [keras.backend.standardize_dtype(t.dtype) for t in keras.tree.flatten(r)]  # noqa: E731
    assert to_dtypes(symbolic) == to_dtypes(eager)


@pytest.mark.parametrize(
    "build",
    [
        lambda **kw: MMoE(2, 4, **kw),
        lambda **kw: CGC(2, **kw),
        lambda **kw: PLE(2, num_levels=2, **kw),
    ],
    ids=["mmoe", "cgc", "ple"],
)
@pytest.mark.parametrize(
    "gate, gate_kwargs, unknown, valid",
    [
        ("softmax", {"temprature": 2.0}, "temprature", "temperature"),
        ("dselect_k", {"k": 2, "gama": 1.0}, "gama", "gamma"),
    ],
)
def test_unknown_gate_kwargs_are_refused_at_construction(build, gate, gate_kwargs, unknown, valid):
    with pytest.raises(
        ValueError,
        match=rf"invalid value for `gate_kwargs`, expected arguments of the '{gate}' gate among "
        rf"\[[^]]*'{valid}'[^]]*'trainable'[^]]*\]. Unknown: \['{unknown}'\]. "
        rf"Received: gate_kwargs=",
    ):
        build(gate=gate, gate_kwargs=gate_kwargs)


def test_gate_kwargs_may_set_keras_layer_arguments():
    layer = MMoE(2, 3, expert_units=4, gate_kwargs={"temperature": 2.0, "trainable": False})
    layer(np.ones((2, 5), "float32"))
    assert all(not gate.trainable and gate.temperature == 2.0 for gate in layer.gates)
    assert MMoE.from_config(layer.get_config()).gates[0].trainable is False


@pytest.mark.parametrize(
    "build",
    [
        lambda expert: MMoE(2, 2, expert=expert, name="mixture"),
        lambda expert: CGC(2, 1, 1, expert=expert, name="mixture"),
        lambda expert: PLE(2, 1, expert=expert),
    ],
    ids=["mmoe", "cgc", "ple"],
)
@pytest.mark.parametrize("batch", [1, 4, 3])
def test_an_expert_that_drops_an_axis_is_refused(build, batch):
    # The LSTM returns its last state, (batch, 3), against gate weights
    # (batch, 4, E): a batch of 1 or of 4 (the sequence length) would be
    # broadcast silently.
    layer = build(keras.layers.LSTM(3))
    with pytest.raises(
        ValueError, match=rf"invalid value for `expert`.*keeps the axes.*shape \({batch}, 3\) "
    ):
        layer(np.ones((batch, 4, 5), "float32"))
    with pytest.raises(ValueError, match=r"invalid value for `expert`.*keeps the axes"):
        build(keras.layers.LSTM(3))(keras.Input((4, 5)))
    # One that keeps them is accepted.
    out = build(keras.layers.LSTM(3, return_sequences=True))(np.ones((batch, 4, 5), "float32"))
    assert [tuple(t.shape) for t in out] == [(batch, 4, 3)] * 2


def test_esmm_refuses_a_list_of_inputs():
    with pytest.raises(ValueError, match=r"`ESMM` \(layer 'esmm'\) expects one input.*Concatenate"):
        ESMM(tower_units=4, name="esmm")([keras.Input((5,)), keras.Input((5,))])
    with pytest.raises(ValueError, match=r"`ESMM` \(layer 'esmm'\) expects one input"):
        ESMM(tower_units=4, name="esmm")([np.ones((2, 5), "float32")] * 2)


def test_esmm_labels_refuse_labels_of_different_lengths():
    with pytest.raises(ValueError, match=r"`conversion`.*as many as `click` \(3\).*1 labels"):
        ESMM.labels([1, 0, 1], [1])
    np.testing.assert_array_equal(ESMM.labels([[1], [1]], [1, 0])["ctcvr"], [[1.0], [0.0]])


def _shared_mmoe_model():
    keras.utils.set_random_seed(0)
    u, v = keras.Input((4,)), keras.Input((4,))
    layer = MMoE(num_tasks=2, num_experts=3, expert_units=(4,), name="mmoe")
    hu, hv = layer(u), layer(v)
    outputs = {
        "t0": keras.layers.Dense(1, name="t0")(hu[0]),
        "t1": keras.layers.Dense(1, name="t1")(hv[1]),
    }
    model = keras_mtl.MultiTaskModel(inputs=[u, v], outputs=outputs)
    model.compile(optimizer="sgd", loss="mse")
    return model, layer


def test_gate_monitor_refuses_a_layer_called_twice_before_training():
    model, layer = _shared_mmoe_model()
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    monitor = GateMonitor([x, x], task_names=["t0", "t1"])
    with pytest.raises(ValueError, match="layer 'mmoe' ran 2 times.*one layer per call site"):
        model.fit([x, x], {"t0": x[:, :1], "t1": x[:, 1:2]}, epochs=1, callbacks=[monitor])
    assert int(model.optimizer.iterations) == 0
    assert gate_monitor.runs_per_call(model, layer) == 2


def test_runs_per_call_counts_nested_models_and_only_this_models_calls():
    layer = MMoE(num_tasks=2, num_experts=2, expert_units=(4,))
    x = keras.Input((4,))
    inner = keras.Model(x, layer(x))
    # `layer` also has a node in `inner`; `outer` runs `inner` twice.
    u, v = keras.Input((4,)), keras.Input((4,))
    outer = keras.Model([u, v], [*inner(u), *inner(v)])
    assert gate_monitor.runs_per_call(inner, layer) == 1
    assert gate_monitor.runs_per_call(outer, layer) == 2
    assert gate_monitor.runs_per_call(keras.Sequential([keras.Input((4,)), inner]), layer) == 1
    # A second model calling the same layer once: one run per call of it.
    w = keras.Input((4,))
    assert gate_monitor.runs_per_call(keras.Model(w, layer(w)), layer) == 1
    assert gate_monitor.runs_per_call(outer, keras.layers.Dense(1)) == 0


class _Twice(keras.Model):
    def __init__(self):
        super().__init__()
        self.mmoe = MMoE(num_tasks=2, num_experts=2, expert_units=(4,), name="mmoe")

    def call(self, inputs):
        return [*self.mmoe(inputs), *self.mmoe(inputs + 1.0)]


def test_gate_monitor_checks_subclassed_models_when_computing():
    model = _Twice()
    x = np.ones((4, 4), "float32")
    model(x)
    assert gate_monitor.runs_per_call(model, model.mmoe) is None
    monitor = GateMonitor(x)
    monitor.set_model(model)
    monitor.on_train_begin()
    with pytest.raises(ValueError, match="layer 'mmoe' ran 2 times"):
        monitor.compute()


def test_gate_monitor_refuses_task_names_of_the_wrong_length_before_training():
    x = keras.Input((4,))
    h = CGC(num_tasks=2, expert_units=(4,), shared_output=True, name="cgc")(x)
    model = keras.Model(x, h)
    monitor = GateMonitor(np.ones((4, 4), "float32"), task_names=["a", "b", "c"])
    monitor.set_model(model)
    with pytest.raises(ValueError, match=r"expected 2 names for layer 'cgc'"):
        monitor.on_train_begin()
    monitor = GateMonitor(np.ones((4, 4), "float32"), task_names=["a", "b"])
    monitor.set_model(model)
    monitor.on_train_begin()
