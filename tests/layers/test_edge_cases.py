"""Layer argument errors, and GateMonitor on gated layers it cannot read."""

import re

import keras
import numpy as np
import pytest

from keras_mtl.callbacks import GateMonitor
from keras_mtl.callbacks.gate_monitor import runs_per_call
from keras_mtl.layers import CGC, PLE, CustomizedSharing, MMoE
from keras_mtl.layers.gate import make_gate

# ---------------------------------------------------------------- num_task_experts


@pytest.mark.parametrize("cls", [CGC, PLE, CustomizedSharing])
@pytest.mark.parametrize("value", [2.5, None, True, np.float32(2.0)])
def test_a_num_task_experts_that_is_neither_an_int_nor_a_sequence_is_named(cls, value):
    # Not an integer and not iterable: the same error as a sequence of the
    # wrong length, not the TypeError of `tuple(value)`.
    message = (
        "Received an invalid value for `num_task_experts`, expected a positive integer or one "
        f"positive integer per task (num_tasks=2). Received: num_task_experts={value!r}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cls(num_tasks=2, num_task_experts=value, expert_units=(4,))


# ---------------------------------------------------------------- gates


def test_make_gate_names_an_unknown_gate():
    # The layers check `gate` first (`check_gate`); `make_gate` called on
    # its own must refuse an unknown name rather than return nothing.
    message = (
        "Received an invalid value for `gate`, expected one of ['softmax', 'dselect_k']. "
        "Received: gate='sparsemax'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_gate("sparsemax", 4, None, name="g", dtype="float32")


@pytest.mark.parametrize(
    "make",
    [
        lambda kw: MMoE(num_tasks=2, num_experts=3, expert_units=(4,), **kw),
        lambda kw: CGC(num_tasks=2, num_task_experts=1, expert_units=(4,), **kw),
        lambda kw: PLE(num_tasks=2, num_task_experts=1, expert_units=(4,), **kw),
    ],
    ids=["mmoe", "cgc", "ple"],
)
@pytest.mark.parametrize("gate_kwargs", [[("temperature", 2.0)], "temperature=2.0", 2.0])
def test_gate_kwargs_that_is_not_a_dict_is_named(make, gate_kwargs):
    message = (
        "Received an invalid value for `gate_kwargs`, expected None or a dict of gate "
        f"arguments. Received: gate_kwargs={gate_kwargs!r}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make({"gate_kwargs": gate_kwargs})


# ---------------------------------------------------------------- GateMonitor


class _Wrapper(keras.layers.Layer):
    """A subclassed layer running `mmoe` `times` times per call: its graph is not readable."""

    def __init__(self, mmoe, times, **kwargs):
        super().__init__(**kwargs)
        self.mmoe, self.times = mmoe, times

    def call(self, x):
        outputs = [self.mmoe(x * float(i + 1)) for i in range(self.times)]
        return [outputs[0][0], outputs[-1][1]]


def _wrapped(times, nest):
    """A functional model around `_Wrapper`, nested in a Sequential when `nest`."""
    keras.utils.set_random_seed(0)
    mmoe = MMoE(num_tasks=2, num_experts=3, expert_units=(4,), name="mmoe")
    inputs = keras.Input((4,))
    block = _Wrapper(mmoe, times, name="wrapper")
    if nest:
        block = keras.Sequential([keras.Input((4,)), keras.layers.Identity(), block], name="seq")
    h = block(inputs)
    outputs = [keras.layers.Dense(1, name=f"t{t}")(h[t]) for t in range(2)]
    return keras.Model(inputs, outputs), mmoe


@pytest.mark.parametrize("nest", [False, True], ids=["functional", "sequential_in_functional"])
def test_a_gated_layer_inside_a_subclassed_part_has_unknown_runs(nest):
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    # Run once: the count cannot be read from the graph (None, not 0 or 1),
    # so training starts and the statistics are those of the layer's call.
    model, mmoe = _wrapped(1, nest)
    assert runs_per_call(model, mmoe) is None
    monitor = GateMonitor(x, task_names=["t0", "t1"])
    monitor.set_model(model)
    monitor.on_train_begin()
    stats = monitor.compute()
    for t, task in enumerate(["t0", "t1"]):
        expected = np.asarray(mmoe.gate_weights(x)[t]).mean(0)
        np.testing.assert_allclose(stats[task]["weights"], expected, rtol=1e-5)
    # Run twice: not seen before training (unknown), caught by the first statistics.
    model, mmoe = _wrapped(2, nest)
    assert runs_per_call(model, mmoe) is None
    monitor = GateMonitor(x, task_names=["t0", "t1"])
    monitor.set_model(model)
    monitor.on_train_begin()
    with pytest.raises(ValueError, match="layer 'mmoe' ran 2 times in one call of the model"):
        monitor.compute()
    assert mmoe._gate_recorder is None
