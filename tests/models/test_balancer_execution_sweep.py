"""Every balancer through `MultiTaskModel.fit` under Keras's execution settings.

(a) mixed precision with overflowing first steps: logs, weights, balancer
state and `evaluate` stay finite; (b) `jit_compile=True`, (c) `run_eagerly=True`
and (d) `steps_per_execution=3` train to the same weights as the plain graph
step. Tiny models and few steps: the sweep is about execution, not accuracy.
"""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import balancers
from tests.models.helpers import TASKS, data

LOSS = {t: "mse" for t in TASKS}
SEED = 3
_RANDOM = ("PCGrad", "GradDrop", "GradVac", "RLW")


def _cases():
    """`{id: factory}`: one balancer per registered class (seeded where random),
    plus wrappers around a gradient method."""
    classes = {}
    for alias in balancers.available():
        cls = type(balancers.get(alias))
        classes.setdefault(cls.__name__, cls)
    cases = {
        name: (lambda cls=cls: cls(seed=SEED)) if name in _RANDOM else cls
        for name, cls in sorted(classes.items())
    }
    cases["LogLoss(PCGrad)"] = lambda: balancers.LogLoss(inner=balancers.PCGrad(seed=SEED))
    cases["InitialLossNormalization(MGDA)"] = lambda: balancers.InitialLossNormalization(
        inner="mgda"
    )
    return cases


CASES = _cases()
# Balancers that cannot run under XLA (`supports_jit=False`).
NO_JIT = {
    "MGDA(cvxpy)": lambda: balancers.MGDA(solver="cvxpy"),
    "RLW(dirichlet)": lambda: balancers.RLW(distribution="dirichlet", seed=SEED),
}
# Random draws under XLA: TensorFlow's stateless samplers pick another
# algorithm there, so a seeded sequence differs from the one without XLA
# (documented in RLW and GradDrop; each is reproducible). With two tasks
# PCGrad's and GradVac's random task orders do not change the result.
XLA_DRAWS_DIFFER = {"RLW", "GradDrop"}
# Losses divided by their own scale: gradients too small to overflow float16.
NEVER_OVERFLOW = {"LogLoss", "InitialLossNormalization"}


def _finite(value) -> bool:
    return bool(np.all(np.isfinite(np.asarray(value, dtype="float64"))))


def _smallest_model():
    """A shared layer of 4 units (marked as the shared representation) and a
    linear head per task."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,))
    h = keras_mtl.layers.SharedBottom(units=(4,), name="trunk")(inputs)
    h = keras_mtl.layers.SharedRepresentation(name="rep")(h)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_mixed_precision_with_overflowing_steps_stays_finite(case):
    x, y = data(n=48, d=3)
    y = {k: v * 30.0 for k, v in y.items()}  # the first scaled steps overflow float16
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _smallest_model()
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS, balancer=CASES[case]())
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    applied = int(model.optimizer.iterations)  # steps the loss scale optimizer did not skip
    assert applied > 0
    if case not in NEVER_OVERFLOW:
        assert applied < 12, "no step overflowed: the labels no longer test what they should"
    expected = {"loss"} | {f"{t}_{k}" for t in TASKS for k in ("loss", "weight")}
    assert expected <= set(history)
    for key, values in history.items():  # balancer logs (solver failures, ...) included
        assert _finite(values), (key, values)
    for weight in model.weights:
        assert _finite(weight), weight.path
    for state in model.balancer.variables:
        assert _finite(state), state.path
    for key, value in model.evaluate(x, y, verbose=0, return_dict=True).items():
        assert _finite(value), (key, value)


def _train(make, **compile_kwargs):
    """The smallest model trained 2 epochs of 4 steps."""
    model = _smallest_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05), loss=LOSS, balancer=make(), **compile_kwargs
    )
    x, y = data(n=32, d=3)
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    for key, values in history.items():
        assert _finite(values), (key, values)
    return model


def _assert_same_weights(a, b, setting):
    for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5, err_msg=setting)


@pytest.mark.parametrize("case", sorted(CASES) + sorted(NO_JIT))
def test_jit_eager_and_steps_per_execution_train_the_same_weights(case, monkeypatch):
    # Two runs per balancer, to keep the sweep short (compiling with XLA is
    # most of its time): eager steps are the reference, and one graph run
    # under XLA takes 3 steps per call (2 epochs of 4 steps: a call of 3 and
    # one of 1). Where XLA cannot run or draws other random numbers, a plain
    # graph run takes its place.
    make = CASES.get(case) or NO_JIT[case]
    reference = _train(make, run_eagerly=True)
    if case in NO_JIT:
        # "auto" (pretending an accelerator, where Keras would pick XLA) runs
        # without XLA; an explicit True is refused.
        monkeypatch.setattr(keras_mtl.MultiTaskModel, "_resolve_auto_jit_compile", lambda _: True)
        graph = _train(make, jit_compile="auto", steps_per_execution=3)
        assert graph.jit_compile is False
        _assert_same_weights(reference, graph, "jit_compile='auto' (no XLA), 3 steps per call")
        with pytest.raises(ValueError, match="cannot run under XLA"):
            _train(make, jit_compile=True)
        return
    jit = _train(make, jit_compile=True, steps_per_execution=3)
    assert jit.jit_compile is True
    if case in XLA_DRAWS_DIFFER:
        graph = _train(make, steps_per_execution=3)
        _assert_same_weights(reference, graph, "graph mode, 3 steps per call")
        again = _train(make, jit_compile=True, steps_per_execution=3)
        _assert_same_weights(jit, again, "jit_compile=True, twice")
    else:
        _assert_same_weights(reference, jit, "jit_compile=True, 3 steps per call")
