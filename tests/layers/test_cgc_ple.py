import keras
import numpy as np
import pytest

from keras_mtl.layers import CGC, PLE
from tests.layers import reference


def test_cgc_task_gates_mix_own_and_shared_experts():
    layer = CGC(
        num_tasks=2,
        num_shared_experts=2,
        num_task_experts=[1, 3],
        expert_units=(4,),
        return_gate_weights=True,
    )
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    outputs, weights = layer(x)
    assert [tuple(w.shape) for w in weights] == [(5, 3), (5, 5)]
    expected = reference.cgc(layer, [x, x], x)
    for out, ref, w in zip(outputs, expected, weights, strict=True):
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)


def test_cgc_list_input_and_shared_output():
    layer = CGC(
        num_tasks=2, num_shared_experts=1, num_task_experts=2, expert_units=(3,), shared_output=True
    )
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(4, 5)).astype("float32") for _ in range(3)]
    outputs = layer(xs)
    assert len(outputs) == 3
    for out, ref in zip(outputs, reference.cgc(layer, xs[:2], xs[2]), strict=True):
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="list of 2 inputs"):
        layer(xs[:2])


def test_ple_with_one_level_equals_cgc_with_the_same_weights():
    kwargs = dict(
        num_tasks=3, num_shared_experts=2, num_task_experts=[1, 2, 1], expert_units=(5, 3)
    )
    cgc, ple = CGC(**kwargs), PLE(num_levels=1, **kwargs)
    x = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    cgc(x)
    ple(x)
    assert [w.shape for w in ple.weights] == [w.shape for w in cgc.weights]
    ple.set_weights(cgc.get_weights())
    for a, b in zip(cgc(x), ple(x), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_ple_levels_follow_the_paper():
    layer = PLE(
        num_tasks=2,
        num_levels=3,
        num_shared_experts=2,
        num_task_experts=1,
        expert_units=(4,),
        return_gate_weights=True,
    )
    x = np.random.default_rng(3).normal(size=(5, 6)).astype("float32")
    outputs, weights = layer(x)
    # Lower levels have a shared gate over all 2 * 1 + 2 experts; the top has none.
    assert [lv.shared_gate is not None for lv in layer.levels] == [True, True, False]
    assert layer.levels[0].shared_gate.num_experts == 4
    # NumPy forward: task t reads its own previous output, the shared experts
    # read the previous shared-gate output.
    h = [x, x, x]
    for level in layer.levels:
        h = reference.cgc(level, h[:2], h[-1] if len(h) == 3 else None)
    for out, ref in zip(outputs, h, strict=True):
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)
    top = layer.levels[-1]
    assert len(weights) == 2 and tuple(weights[0].shape) == (5, top.gates[0].num_experts)


def test_ple_shared_gate_feeds_the_next_level():
    layer = PLE(num_tasks=2, num_levels=2, expert_units=(4,))
    x = np.random.default_rng(4).normal(size=(5, 6)).astype("float32")
    before = [np.asarray(o) for o in layer(x)]
    kernel = layer.levels[0].shared_gate.dense.kernel
    kernel.assign(np.asarray(kernel) * 5.0 + 1.0)
    after = [np.asarray(o) for o in layer(x)]
    assert not any(np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_user_expert_in_ple_and_dselect_k_gates():
    layer = PLE(
        num_tasks=2,
        num_levels=2,
        num_shared_experts=2,
        num_task_experts=2,
        expert=keras.layers.Dense(4, activation="relu"),
        gate="dselect_k",
        gate_kwargs={"k": 2},
    )
    x = np.random.default_rng(5).normal(size=(3, 4)).astype("float32")
    outputs = layer(x)
    assert [tuple(o.shape) for o in outputs] == [(3, 4), (3, 4)]
    # Every bank holds its own Dense clones and every gate is a DSelect-k gate.
    assert all(len(lv.shared_experts.experts) == 2 for lv in layer.levels)
    assert all(hasattr(g, "z_dense") for lv in layer.levels for g in lv.gates)
    h = [x, x, x]
    for level in layer.levels:
        h = reference.cgc(level, h[:2], h[-1] if len(h) == 3 else None)
    for out, ref in zip(outputs, h, strict=True):
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [CGC, PLE])
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_tasks": 2, "num_task_experts": [1, 2, 3]}, r"num_task_experts=\[1, 2, 3\]"),
        ({"num_tasks": 2, "num_task_experts": 0}, "num_task_experts=0"),
        ({"num_tasks": 2, "num_shared_experts": 0}, "num_shared_experts=0"),
        ({"num_tasks": 0}, "num_tasks=0"),
        (
            {"num_tasks": 2, "num_task_experts": 1, "gate": "dselect_k", "gate_kwargs": {"k": 3}},
            "k=3",
        ),
    ],
)
def test_bad_arguments_are_named(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_ple_bad_num_levels():
    with pytest.raises(ValueError, match="num_levels=0"):
        PLE(num_tasks=2, num_levels=0)


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda: CGC(num_tasks=2, num_task_experts=2, expert_units=3, return_gate_weights=True),
        lambda: PLE(
            num_tasks=2, num_levels=2, num_task_experts=2, expert_units=3, return_gate_weights=True
        ),
    ],
    ids=["cgc", "ple"],
)
def test_empty_batch_in_eager_calls(make_layer):
    # Made in the test, not at collection: a layer made there draws its initializers'
    # seeds from the global random state and bumps the layer name counters at import.
    layer = make_layer()
    outputs, weights = layer(np.zeros((0, 5), "float32"))
    assert [tuple(t.shape) for t in outputs] == [(0, 3), (0, 3)]
    assert [tuple(w.shape) for w in weights] == [(0, 3), (0, 3)]


def test_ple_refuses_a_list_input_with_a_clear_error():
    # PLE's first level reads one input for every path; per-task inputs are CGC's.
    layer = PLE(num_tasks=2, num_levels=2, expert_units=3, name="ple")
    message = r"`PLE` \(layer 'ple'\) expects one input tensor.*a list of 3 inputs.*`CGC`"
    with pytest.raises(ValueError, match=message):
        layer([keras.Input((5,))] * 3)  # first call: in build
    layer(np.ones((1, 5), "float32"))
    with pytest.raises(ValueError, match=message):
        layer([np.ones((1, 5), "float32")] * 3)  # built: in call


@pytest.mark.parametrize("cls", [CGC, PLE])
def test_gate_kwargs_cannot_repeat_what_the_layer_sets(cls):
    with pytest.raises(ValueError, match=r"`gate_kwargs`.*\['num_experts'\]"):
        cls(num_tasks=2, gate_kwargs={"num_experts": 4})
