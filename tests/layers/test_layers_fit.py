"""A short `fit` through `MultiTaskModel` for every expert-family layer."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.layers import CGC, ESMM, PLE, CustomizedSharing, DSelectK, ExpertBank, Gate, MMoE
from keras_mtl.layers.expert_bank import mix_experts


def _data(n=48, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    return x, {"t0": x[:, :1] * 2.0, "t1": x[:, 1:2] - x[:, 2:3]}


def _heads(per_task):
    return {f"t{t}": keras.layers.Dense(1, name=f"t{t}")(h) for t, h in enumerate(per_task)}


def _manual_moe(gate_cls, **gate_kwargs):
    def build(inputs):
        experts = ExpertBank(num_experts=4, units=(5,))(inputs)
        weights = [gate_cls(num_experts=4, **gate_kwargs)(inputs) for _ in range(2)]
        return [mix_experts(w, experts) for w in weights]

    return build


ARCHITECTURES = {
    "expert_bank": lambda x: [
        keras.layers.Flatten()(ExpertBank(num_experts=3, units=(4,))(x)) for _ in range(2)
    ],
    "gate": _manual_moe(Gate, temperature=2.0, dropout=0.1),
    "dselect_k": _manual_moe(DSelectK, k=2, entropy_reg=0.1),
    "mmoe": lambda x: MMoE(num_tasks=2, num_experts=3, expert_units=(5,))(x),
    "mmoe_dselect_k": lambda x: MMoE(
        num_tasks=2, num_experts=4, expert_units=(5,), gate="dselect_k", gate_kwargs={"k": 2}
    )(x),
    "cgc": lambda x: CGC(num_tasks=2, num_shared_experts=2, expert_units=(5,))(x),
    "ple": lambda x: PLE(num_tasks=2, num_levels=2, expert_units=(5,))(x),
    "customized_sharing": lambda x: CustomizedSharing(num_tasks=2, expert_units=(4,))(x),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_fit_updates_the_layer(name):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=_heads(ARCHITECTURES[name](inputs)))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    x, y = _data()
    before = [np.asarray(w) for w in model.trainable_weights]
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    after = [np.asarray(w) for w in model.trainable_weights]
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    changed = [not np.allclose(a, b) for a, b in zip(before, after, strict=True)]
    assert all(changed), [
        w.path for w, c in zip(model.trainable_weights, changed, strict=True) if not c
    ]
    if name == "dselect_k":
        # The entropy regulariser is part of the objective.
        tasks = np.add(history.history["t0_loss"], history.history["t1_loss"])
        assert (np.asarray(history.history["loss"]) > tasks).all()


def test_esmm_fit():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    click = (x[:, 0] > 0).astype("float32")
    conversion = click * (x[:, 1] > 0)
    inputs = keras.Input((6,))
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=ESMM(tower_units=(8,))(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    history = model.fit(x, ESMM.labels(click, conversion), epochs=3, batch_size=16, verbose=0)
    assert history.history["ctr_loss"][-1] < history.history["ctr_loss"][0]
    assert history.history["ctcvr_loss"][-1] < history.history["ctcvr_loss"][0]


def test_gradient_balancer_sees_the_right_shared_variables():
    # MMoE: only the experts feed both tasks. PLE with 2 levels: at level 0 every
    # expert and the shared gate feed the shared path, which reaches both tasks;
    # the level-0 task gates feed one task each; at level 1 only the shared
    # experts are read by both task gates.
    expected = {
        "mmoe": {"mmoe/experts/kernel_0", "mmoe/experts/bias_0"},
        "ple": {
            f"ple/level_0/{bank}/{w}"
            for bank in ("shared_experts", "task_0_experts", "task_1_experts")
            for w in ("kernel_0", "bias_0")
        }
        | {"ple/level_0/shared_gate/logits/kernel"}
        | {"ple/level_1/shared_experts/kernel_0", "ple/level_1/shared_experts/bias_0"},
    }
    layers = {
        "mmoe": lambda: MMoE(num_tasks=2, num_experts=3, expert_units=(4,), name="mmoe"),
        "ple": lambda: PLE(num_tasks=2, num_levels=2, expert_units=(4,), name="ple"),
    }
    x, y = _data(n=32)
    for name, make in layers.items():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,))
        model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=_heads(make()(inputs)))
        model.compile(optimizer="adam", loss="mse", balancer="pcgrad")
        history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert set(model.shared_variable_paths) == expected[name]
