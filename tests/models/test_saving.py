"""Loading paths beyond `load_model` of a compiled model in the same process."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.models.helpers import TASKS, build, data, run_in_a_fresh_process

LOSS = {"task_1": "mse", "task_2": "mse"}


# Keras warns when the file and the model hold optimizers with different variables (one
# of them untrained): expected where only the weights and the balancer state are checked.
OPTIMIZER_STATES_DIFFER = pytest.mark.filterwarnings(
    "ignore:Skipping variable loading for optimizer:UserWarning"
)


def _by_path(model, without=""):
    """Weights by path, the model's own variables without the model's name."""
    paths = [v.path.removeprefix(f"{model.name}/") for v in model.weights]
    return {
        p: np.array(v)
        for p, v in zip(paths, model.weights, strict=True)
        if not (without and p.startswith(without))
    }


def _trained(balancer="db_mtl"):
    x, y = data(n=64)
    model = build()
    model.compile(optimizer="adam", loss=LOSS, balancer=balancer)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return model, x, y


def test_import_keras_mtl_is_all_that_load_model_needs_in_a_fresh_process(tmp_path):
    model, x, _ = _trained()
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, keras, keras_mtl\n"
        f"m = keras.saving.load_model({str(tmp_path / 'm.keras')!r})\n"
        "assert type(m.balancer).__name__ == 'DBMTL', type(m.balancer)\n"
        f"out = m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, **out)\n"
        # The balancer's state and the optimizer's step count come back too.
        "state = {v.path: np.asarray(v) for v in m.balancer.variables}\n"
        "state['optimizer_iterations'] = np.asarray(m.optimizer.iterations)\n"
        f"np.savez({str(tmp_path / 'state.npz')!r}, **state)\n"
    )
    run_in_a_fresh_process(script)
    served = np.load(tmp_path / "out.npz")
    expected = model.predict(x, verbose=0)
    for name in TASKS:
        np.testing.assert_allclose(served[name], expected[name], rtol=1e-6)
    state = dict(np.load(tmp_path / "state.npz"))
    assert int(state.pop("optimizer_iterations")) == int(model.optimizer.iterations) == 4
    saved = {v.path: np.asarray(v) for v in model.balancer.variables}
    # DB-MTL keeps a step count, moving loss norms and moving gradients: all of them.
    assert sorted(state) == sorted(saved) and len(saved) >= 3
    for path, value in saved.items():
        np.testing.assert_array_equal(state[path], value, err_msg=path)
    # Trained state, not the initial zeros: four steps were counted.
    assert [float(v) for p, v in saved.items() if p.endswith("/step")] == [4.0]
    assert all(np.any(v != 0) for v in saved.values())


def test_a_compiled_model_loads_uncompiled_and_keeps_its_state(tmp_path):
    model, x, y = _trained()
    last = np.array(model._last_task_weights)
    assert not np.allclose(last, 1.0)  # DB-MTL's weights, not the initial ones
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")

    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert not loaded.compiled
    np.testing.assert_array_equal(np.array(loaded._last_task_weights), last)
    loaded.compile(optimizer="adam", loss=LOSS, balancer="db_mtl")
    # `evaluate` weights the task losses with the saved last weights.
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0))

    fresh = build(seed=7)
    fresh.load_weights(tmp_path / "m.weights.h5")
    saved, restored = _by_path(model), _by_path(fresh)
    assert "last_task_weights" in restored
    for path, value in restored.items():
        np.testing.assert_array_equal(value, saved[path])


@OPTIMIZER_STATES_DIFFER
def test_an_uncompiled_models_weights_load_into_a_compiled_model(tmp_path):
    source = build(seed=3)
    source.save_weights(tmp_path / "w.weights.h5")
    model, x, _ = _trained()
    last = np.array(model._last_task_weights)
    # The file has no balancer state for DB-MTL to take: it keeps its own.
    with pytest.warns(UserWarning, match="Skipped the saved state of the balancer 'dbmtl'"):
        model.load_weights(tmp_path / "w.weights.h5")
    restored = _by_path(model)
    for path, value in _by_path(source).items():
        np.testing.assert_array_equal(restored[path], value)
    np.testing.assert_array_equal(np.array(model._last_task_weights), last)


def test_a_shared_layer_given_as_an_object_with_a_common_name_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    trunk = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")
    h = trunk(inputs)
    # Every SharedBottom names its first dense layer `dense_0`.
    outputs = {
        name: keras.layers.Dense(1, name=name)(
            keras_mtl.layers.SharedBottom(units=(4,), name=f"{name}_tower")(h)
        )
        for name in TASKS
    }
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)
    model.compile(
        optimizer="sgd", loss=LOSS, balancer="pcgrad", shared_layers=[trunk.dense_layers[0]]
    )
    x, y = data(n=32)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert model.get_compile_config()["shared_layers"] == ["trunk/dense_0"]
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert loaded.shared_variable_paths == model.shared_variable_paths
    assert loaded.shared_variable_paths == ["trunk/dense_0/kernel", "trunk/dense_0/bias"]
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-7)


@OPTIMIZER_STATES_DIFFER
@pytest.mark.parametrize(("saved", "compiled"), [("uw", "ew"), ("ew", "uw"), ("famo", "dwa")])
def test_weights_saved_with_another_balancer_load_with_a_warning(tmp_path, saved, compiled):
    model, _, _ = _trained(saved)
    model.save_weights(tmp_path / "w.weights.h5")
    other = build(seed=5)
    other.compile(optimizer="adam", loss=LOSS, balancer=compiled)
    initial = [np.array(v) for v in other.balancer.variables]
    with pytest.warns(UserWarning, match="Skipped the saved state of the balancer"):
        other.load_weights(tmp_path / "w.weights.h5")
    expected = _by_path(model, without=model.balancer.name)
    restored = _by_path(other, without=other.balancer.name)
    assert sorted(restored) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(restored[path], value)
    for a, b in zip(initial, other.balancer.variables, strict=True):
        np.testing.assert_array_equal(a, np.array(b))
