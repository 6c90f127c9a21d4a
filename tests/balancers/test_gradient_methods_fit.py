"""Every gradient method trains the synthetic two-task model (issue 5)."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import balancers

GRADIENT_METHODS = [
    "pcgrad",
    "graddrop",
    "gradvac",
    "mgda",
    "mgda_ub",
    "cagrad",
    "imtl",
    "nash_mtl",
    "aligned_mtl",
    "upgrad",
    "dualproj",
    "db_mtl",
]
LOSS = {"task_1": "mse", "task_2": "mse"}


@pytest.fixture(scope="module")
def data():
    (x, y), _ = keras_mtl.datasets.synthetic.load_data(
        num_train=256, num_test=16, input_dim=20, seed=0
    )
    # Standardised targets: every method starts from losses near 1.
    return x, {k: ((v - v.mean()) / v.std()).astype("float32") for k, v in y.items()}


def build(input_dim, representation=False, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_dim,))
    h = keras_mtl.layers.SharedBottom(units=(16,))(inputs)
    if representation:
        h = keras_mtl.layers.SharedRepresentation()(h)
    outputs = {name: keras.layers.Dense(1, name=name)(h) for name in LOSS}
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


def train(data, balancer, epochs=3, **compile_kwargs):
    x, y = data
    representation = compile_kwargs.pop("representation", False)
    model = build(x.shape[1], representation)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01), loss=LOSS, balancer=balancer, **compile_kwargs
    )
    history = model.fit(x, y, epochs=epochs, batch_size=64, shuffle=False, verbose=0)
    return model, history.history


def assert_both_losses_fall(history):
    for task in LOSS:
        losses = history[f"{task}_loss"]
        assert np.isfinite(losses).all()
        assert losses[-1] < 0.8 * losses[0], (task, losses)


def test_every_gradient_method_is_registered():
    for name in GRADIENT_METHODS:
        assert balancers.get(name).requires_jacobian


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_trains_in_graph_mode(data, name):
    model, history = train(data, name)
    assert_both_losses_fall(history)
    assert model.balancer.requires_jacobian
    if name == "imtl":
        # IMTL-L's loss scales are trained through the auxiliary loss.
        assert np.abs(np.array(model.balancer.loss_scale)).min() > 1e-3


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "cagrad", "nash_mtl", "upgrad", "db_mtl"])
def test_trains_under_xla(data, name):
    _, history = train(data, name, jit_compile=True)
    assert_both_losses_fall(history)


@pytest.mark.parametrize("name", ["mgda_ub", "graddrop", "pcgrad", "db_mtl"])
def test_trains_in_representation_mode(data, name):
    mode = "auto" if name in ("mgda_ub", "graddrop") else "representation"
    model, history = train(data, name, gradient_mode=mode, representation=True)
    assert model._engine.resolve_mode(model) == "representation"
    assert_both_losses_fall(history)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_trains_the_labelled_task_when_the_other_has_no_labels(data, name):
    # Every batch gives task_2 a zero loss and a zero gradient: MGDA, MGDA-UB
    # and IMTL put all the weight on it and no variable moved.
    x, y = data
    y = {"task_1": y["task_1"], "task_2": np.full_like(y["task_2"], np.nan)}
    model, history = train((x, y), name, representation=name == "mgda_ub")
    losses = history["task_1_loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses
    assert history["task_2_weight"] == [0.0, 0.0, 0.0]


def test_cvxpy_solvers_train_and_log_failures(data):
    _, history = train(data, balancers.NashMTL(solver="cvxpy", name="nash"), epochs=2)
    assert_both_losses_fall(history)
    assert history["nash_solver_failures"][-1] == 0.0
    _, history = train(data, balancers.CAGrad(solver="cvxpy", name="ca"), epochs=2)
    assert history["ca_solver_failures"][-1] == 0.0
    with pytest.raises(ValueError, match="XLA"):
        build(4).compile(loss=LOSS, balancer=balancers.MGDA(solver="cvxpy"), jit_compile=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: balancers.GradVac(beta=0.5, seed=3),
        lambda: balancers.NashMTL(update_every=2),
        lambda: balancers.DBMTL(sigma=0.5),
        lambda: balancers.PCGrad(seed=1),
        lambda: balancers.IMTL(),
        lambda: balancers.GradDrop(seed=2),
    ],
    ids=["gradvac", "nash_mtl", "db_mtl", "pcgrad", "imtl", "graddrop"],
)
def test_save_load_resume_reproduces_stateful_methods(data, tmp_path, make):
    x, y = data
    model = build(x.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS, balancer=make())
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.balancer) is type(model.balancer)
    assert loaded.balancer.get_config() == model.balancer.get_config()
    for a, b in zip(model.balancer.variables, loaded.balancer.variables, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    for a, b in zip(model.balancer.variables, loaded.balancer.variables, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
