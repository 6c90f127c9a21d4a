"""Checks every expert-family layer goes through: symbolic and eager calls, the
three input ranks, config round trip, .keras save/load, mixed precision."""

import json

import keras
import numpy as np
import pytest

from keras_mtl.layers import CGC, ESMM, PLE, CustomizedSharing, DSelectK, ExpertBank, Gate, MMoE

BUILDERS = {
    "expert_bank": lambda: ExpertBank(num_experts=3, units=(6, 4), dropout=0.1),
    "gate": lambda: Gate(num_experts=3, temperature=0.5, dropout=0.2, use_bias=True),
    "dselect_k": lambda: DSelectK(num_experts=5, k=2, gamma=0.5, entropy_reg=1e-3),
    "mmoe": lambda: MMoE(num_tasks=2, num_experts=3, expert_units=(4,)),
    "mmoe_dselect_k": lambda: MMoE(
        num_tasks=2, num_experts=4, expert_units=(4,), gate="dselect_k", gate_kwargs={"k": 2}
    ),
    "cgc": lambda: CGC(num_tasks=2, num_shared_experts=2, num_task_experts=[1, 2], expert_units=4),
    "ple": lambda: PLE(num_tasks=2, num_levels=2, num_shared_experts=1, expert_units=(4,)),
    "esmm": lambda: ESMM(tower_units=(4,), shared_units=(5,), return_cvr=True),
    "customized_sharing": lambda: CustomizedSharing(
        num_tasks=2, num_shared_experts=1, num_task_experts=2, expert_units=(3,)
    ),
}

# The same layers built from NumPy scalars (float32 only for exactly representable values).
i, f, d = np.int64, np.float32, np.float64
NUMPY_BUILDERS = {
    "expert_bank": lambda: ExpertBank(num_experts=i(3), units=(i(6), i(4)), dropout=d(0.1)),
    "gate": lambda: Gate(num_experts=i(3), temperature=f(0.5), dropout=d(0.2), use_bias=True),
    "dselect_k": lambda: DSelectK(num_experts=i(5), k=i(2), gamma=f(0.5), entropy_reg=d(1e-3)),
    "mmoe": lambda: MMoE(num_tasks=i(2), num_experts=i(3), expert_units=(i(4),)),
    "mmoe_dselect_k": lambda: MMoE(
        num_tasks=2, num_experts=4, expert_units=(4,), gate="dselect_k", gate_kwargs={"k": 2}
    ),
    "cgc": lambda: CGC(
        num_tasks=i(2),
        num_shared_experts=i(2),
        num_task_experts=np.array([1, 2]),
        expert_units=i(4),
    ),
    "ple": lambda: PLE(
        num_tasks=i(2), num_levels=i(2), num_shared_experts=i(1), expert_units=[i(4)]
    ),
    "esmm": lambda: ESMM(tower_units=(i(4),), shared_units=i(5), return_cvr=True),
    "customized_sharing": lambda: CustomizedSharing(
        num_tasks=i(2), num_shared_experts=i(1), num_task_experts=i(2), expert_units=(i(3),)
    ),
}

# Last-axis width of each output for an input with 5 features.
EXPECTED = {
    "expert_bank": [(3, 4)],
    "gate": [(3,)],
    "dselect_k": [(5,)],
    "mmoe": [(4,), (4,)],
    "mmoe_dselect_k": [(4,), (4,)],
    "cgc": [(4,), (4,)],
    "ple": [(4,), (4,)],
    "esmm": [(1,), (1,), (1,)],
    "customized_sharing": [(9,), (9,)],
}


def _outputs(result):
    if isinstance(result, dict):
        return [result[k] for k in sorted(result)]
    if isinstance(result, list | tuple):
        return list(result)
    return [result]


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("leading", [(), (3,), (2, 3)], ids=["tabular", "sequence", "image"])
def test_shapes_for_three_input_ranks(name, leading):
    layer = BUILDERS[name]()
    x = np.random.default_rng(0).normal(size=(2, *leading, 5)).astype("float32")
    eager = _outputs(layer(x))
    symbolic = _outputs(layer(keras.Input((*leading, 5))))
    assert [tuple(t.shape) for t in eager] == [(2, *leading, *e) for e in EXPECTED[name]]
    assert [tuple(t.shape) for t in symbolic] == [(None, *leading, *e) for e in EXPECTED[name]]
    # The layers act per position: the same values as the flattened batch.
    flat = _outputs(layer(x.reshape(-1, 5), training=False))
    for t, f in zip(_outputs(layer(x, training=False)), flat, strict=True):
        np.testing.assert_allclose(
            np.asarray(t).reshape(np.asarray(f).shape), np.asarray(f), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_config_round_trip(name):
    layer = BUILDERS[name]()
    config = layer.get_config()
    again = type(layer).from_config(config)
    assert again.get_config() == config
    x = np.ones((2, 5), "float32")
    again(x)
    layer(x)
    assert [w.shape for w in again.weights] == [w.shape for w in layer.weights]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_numpy_scalars_are_accepted_and_stored_as_python_types(name):
    config = NUMPY_BUILDERS[name]().get_config()
    plain = BUILDERS[name]().get_config()
    assert {**config, "name": None} == {**plain, "name": None}
    json.dumps(config)
    assert type(NUMPY_BUILDERS[name]()).from_config(config).get_config() == config


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_keras_save_and_load_give_equal_predictions(name, tmp_path):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, BUILDERS[name]()(inputs))
    x = np.random.default_rng(1).normal(size=(4, 5)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    expected, actual = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for a, b in zip(_outputs(expected), _outputs(actual), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(model.weights, loaded.weights, strict=True)
    )


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_mixed_precision_matches_float32(name):
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    reference_layer = BUILDERS[name]()
    expected = _outputs(reference_layer(x, training=False))
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = BUILDERS[name]()
        layer(x)
        layer.set_weights(reference_layer.get_weights())
        for t, e in zip(_outputs(layer(x, training=False)), expected, strict=True):
            np.testing.assert_allclose(np.asarray(t, "float32"), e, rtol=1e-2, atol=1e-2)
        outputs = _outputs(layer(x, training=True))
        assert all(np.isfinite(np.asarray(t, "float32")).all() for t in outputs)
        assert all(w.dtype == "float32" for w in layer.weights)
        if name in ("gate", "dselect_k", "esmm"):
            # Probabilities and gate weights stay in float32.
            assert all(t.dtype == "float32" for t in outputs)
        else:
            assert all(t.dtype == "float16" for t in outputs)
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize(
    "make, argument",
    [
        (
            lambda: MMoE(num_tasks=2, num_experts=2, return_gate_weights="yes"),
            "return_gate_weights",
        ),
        (lambda: PLE(num_tasks=2, return_gate_weights=1), "return_gate_weights"),
        (lambda: CGC(num_tasks=2, shared_output="no"), "shared_output"),
        (lambda: ExpertBank(num_experts=2, use_bias=None), "use_bias"),
        (lambda: Gate(num_experts=2, use_bias="no"), "use_bias"),
    ],
)
def test_flags_must_be_bools(make, argument):
    with pytest.raises(ValueError, match=rf"`{argument}`, expected a bool\. Received: {argument}="):
        make()


def test_esmm_return_cvr_must_be_a_bool():
    with pytest.raises(
        ValueError, match=r"`return_cvr`, expected a bool\. Received: return_cvr='y'"
    ):
        ESMM(return_cvr="y")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_sequence_mask_reaches_every_output(name):
    # The layers act per position, so a padding mask must pass through them,
    # as through keras.layers.Dense; a masked average downstream then skips
    # the padded positions.
    tokens = np.array([[3, 1, 0, 0], [2, 5, 7, 0]], "int32")
    inputs = keras.Input((4,), dtype="int32")
    embedding = keras.layers.Embedding(9, 5, mask_zero=True)
    layer = BUILDERS[name]()
    outputs = _outputs(layer(embedding(inputs)))
    assert all(getattr(t, "_keras_mask", None) is not None for t in outputs)
    pooled = [
        keras.layers.GlobalAveragePooling1D()(t)
        for t in outputs
        if len(t.shape) == 3  # (batch, positions, features)
    ]
    if not pooled:
        return
    model = keras.Model(inputs, pooled)
    values = _outputs(layer(np.asarray(embedding(tokens)), training=False))
    mask = (tokens != 0).astype("float64")[..., None]
    expected = [
        (np.asarray(v, "float64") * mask).sum(1) / mask.sum(1)
        for v in values
        if np.asarray(v).ndim == 3
    ]
    for got, want in zip(_outputs(model(tokens)), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_cgc_list_input_keeps_each_path_mask():
    inputs = [keras.Input((3, 4)) for _ in range(3)]
    masked = [
        keras.layers.Masking(mask_value=float(v))(x) for v, x in zip((1, 2, 3), inputs, strict=True)
    ]
    layer = CGC(num_tasks=2, num_task_experts=1, expert_units=(3,), shared_output=True)
    outputs = layer(masked)
    model = keras.Model(inputs, [keras.ops.cast(t._keras_mask, "float32") for t in outputs])
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, 3, 4)).astype("float32") for _ in range(3)]
    for v, x in zip((1, 2, 3), xs, strict=True):
        x[0, v - 1] = float(v)  # position v - 1 of example 0 is padding of input v
    expected = [(np.abs(x - v) > 0).any(-1) for v, x in zip((1, 2, 3), xs, strict=True)]
    for got, want in zip(model(xs), expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want.astype("float32"))


# Every option away from its default, so that a constructor argument that
# `get_config` forgets changes the rebuilt layer (the builders above keep
# most options at their defaults, where a forgotten key goes unnoticed).
L2 = {"class_name": "L2", "config": {"l2": 0.01}}
EXPERT_OPTIONS = {
    "expert_units": (4, 3),
    "expert_activation": "tanh",
    "expert_dropout": 0.25,
    "kernel_initializer": "he_normal",
    "kernel_regularizer": L2,
}
NON_DEFAULT = {
    "expert_bank": lambda: ExpertBank(
        num_experts=3,
        units=(6, 4),
        activation="tanh",
        dropout=0.1,
        use_bias=False,
        kernel_initializer="he_normal",
        bias_initializer="ones",
        kernel_regularizer=L2,
        bias_regularizer=L2,
    ),
    "gate": lambda: Gate(
        num_experts=3,
        temperature=0.5,
        dropout=0.2,
        use_bias=True,
        kernel_initializer="he_normal",
        kernel_regularizer=L2,
    ),
    "dselect_k": lambda: DSelectK(
        num_experts=5,
        k=2,
        gamma=0.5,
        entropy_reg=1e-3,
        z_initializer="ones",
        w_initializer="he_normal",
    ),
    "mmoe": lambda: MMoE(
        num_tasks=2,
        num_experts=3,
        gate="dselect_k",
        gate_kwargs={"k": 2, "gamma": 0.5},
        return_gate_weights=True,
        **EXPERT_OPTIONS,
    ),
    "cgc": lambda: CGC(
        num_tasks=2,
        num_shared_experts=2,
        num_task_experts=[1, 2],
        gate_kwargs={"temperature": 2.0},
        shared_output=True,
        return_gate_weights=True,
        **EXPERT_OPTIONS,
    ),
    "ple": lambda: PLE(
        num_tasks=2,
        num_levels=3,
        num_shared_experts=2,
        num_task_experts=[2, 1],
        gate_kwargs={"temperature": 2.0, "use_bias": True},
        return_gate_weights=True,
        **EXPERT_OPTIONS,
    ),
    "esmm": lambda: ESMM(
        tower_units=(4, 2),
        shared_units=(5,),
        activation="tanh",
        dropout=0.25,
        return_cvr=True,
        kernel_initializer="he_normal",
        kernel_regularizer=L2,
    ),
    "customized_sharing": lambda: CustomizedSharing(
        num_tasks=2, num_shared_experts=2, num_task_experts=[1, 3], **EXPERT_OPTIONS
    ),
}


def _nested_configs(layer):
    # Without the names: unnamed Dropout layers get a new global counter each time.
    return [
        {k: v for k, v in sub.get_config().items() if k != "name"}
        for sub in layer._flatten_layers(include_self=False)
    ]


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_config_round_trip_keeps_every_non_default_option(name):
    assert set(NON_DEFAULT) == set(BUILDERS) - {"mmoe_dselect_k"}  # every layer class
    layer = NON_DEFAULT[name]()
    again = type(layer).from_config(layer.get_config())
    x = np.ones((2, 5), "float32")
    layer(x)
    again(x)
    # The nested layers (expert banks, gates, dense layers) must be rebuilt
    # with the same options, not only the outer config echoed back.
    assert _nested_configs(again) == _nested_configs(layer)
    assert again.get_config() == layer.get_config()
    # The regularisers are applied, not only named (DSelect-k has none).
    assert len(again.losses) == len(layer.losses)
    assert len(layer.losses) > 0 or name == "dselect_k"


@pytest.mark.parametrize(
    "make",
    [
        lambda: MMoE(num_tasks=2, num_experts=3, expert_units=(4,), return_gate_weights=True),
        lambda: CGC(num_tasks=2, expert_units=(4,), return_gate_weights=True),
        lambda: PLE(num_tasks=2, num_levels=2, expert_units=(4,), return_gate_weights=True),
    ],
    ids=["mmoe", "cgc", "ple"],
)
def test_gate_weights_outputs_keep_the_padding_mask(make):
    # With return_gate_weights the outputs are (task outputs, gate weights):
    # the gate weights are per position too and carry the input's mask.
    tokens = np.array([[3, 1, 0, 0], [2, 5, 7, 0]], "int32")
    inputs = keras.Input((4,), dtype="int32")
    outputs, weights = make()(keras.layers.Embedding(9, 5, mask_zero=True)(inputs))
    assert len(outputs) == len(weights) == 2
    masks = [keras.ops.cast(t._keras_mask, "int32") for t in [*outputs, *weights]]
    for got in keras.Model(inputs, masks)(tokens):
        np.testing.assert_array_equal(np.asarray(got), (tokens != 0).astype("int32"))
