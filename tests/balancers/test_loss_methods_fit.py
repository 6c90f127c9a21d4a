"""Properties shared by every loss-weighting method of issue 4, and short fits
of each on the synthetic data through `MultiTaskModel`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl import balancers
from tests.models.helpers import json_report

TASKS = ("task_1", "task_2")
LOSS = {"task_1": "mse", "task_2": "mse"}


def _all_methods():
    return {
        "uw": lambda: balancers.UncertaintyWeighting(),
        "uw_regression": lambda: balancers.UncertaintyWeighting(regression_form=True),
        "dwa": lambda: balancers.DWA(steps_per_epoch=2),
        "dtp": lambda: balancers.DTP(),
        "rlw": lambda: balancers.RLW(seed=1),
        "rlw_dirichlet": lambda: balancers.RLW("dirichlet", seed=1),
        "gls": lambda: balancers.GLS(),
        "imtl_l": lambda: balancers.IMTLL(),
        "log": lambda: balancers.LogLoss(),
        "log_gradnorm": lambda: balancers.LogLoss(balancers.GradNorm()),
        "log_pcgrad": lambda: balancers.LogLoss(balancers.PCGrad(seed=0)),
        # (LogLoss refuses uncertainty weighting: log-losses can be negative.)
        "initial_loss_uw": lambda: balancers.InitialLossNormalization(
            balancers.UncertaintyWeighting()
        ),
        "initial_loss": lambda: balancers.InitialLossNormalization(),
        "initial_loss_famo": lambda: balancers.InitialLossNormalization(balancers.FAMO()),
        "famo": lambda: balancers.FAMO(),
        "gradnorm": lambda: balancers.GradNorm(),
    }


METHODS = _all_methods()


def _steps(num_tasks=3, steps=8, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(num_tasks, 5)).astype("float32"), rng.uniform(0.1, 3.0, num_tasks))
        for _ in range(steps)
    ]


def _run(b, jac, losses):
    return b.aggregate(jac if b.requires_jacobian else None, losses)


def test_every_alias_is_registered():
    for alias, cls in [
        ("uw", "UncertaintyWeighting"),
        ("dwa", "DWA"),
        ("dtp", "DTP"),
        ("rlw", "RLW"),
        ("gls", "GLS"),
        ("imtl_l", "IMTLL"),
        ("log", "LogLoss"),
        ("initial_loss", "InitialLossNormalization"),
        ("famo", "FAMO"),
        ("gradnorm", "GradNorm"),
    ]:
        assert type(balancers.get(alias)).__name__ == cls


@pytest.mark.parametrize("name", sorted(METHODS))
def test_finite_weights_for_zero_tiny_and_huge_losses(name):
    b = METHODS[name]()
    jac = np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [3.0, 1.0, 0.0]], "float32")
    for losses in ([0.0, 1.0, 1e6], [1e-8, 0.0, 1.0], [1e6, 1e-8, 0.0], [1.0, 1.0, 1.0]):
        result = _run(b, jac, np.array(losses, "float32"))
        assert np.all(np.isfinite(result.weights)), (name, losses, result.weights)
        if result.direction is not None:
            assert np.all(np.isfinite(result.direction))
        aux = b.auxiliary_loss(np.array(losses, "float32"))
        assert np.isfinite(float(aux))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_config_round_trip_and_state_restore_continue_the_trajectory(name):
    steps = _steps()
    b = METHODS[name]()
    for jac, losses in steps[:4]:
        _run(b, jac, losses)
    copy = balancers.deserialize(balancers.serialize(b))
    assert type(copy) is type(b) and copy.get_config() == b.get_config()
    if not copy.built:
        copy.build(3)
    assert [v.path for v in copy.variables] != [] or b.variables == []
    for v, w in zip(copy.variables, b.variables, strict=True):
        v.assign(w)
    for jac, losses in steps[4:]:
        np.testing.assert_array_equal(_run(copy, jac, losses).weights, _run(b, jac, losses).weights)


def _compiled(balancer, num_tasks=3):
    balancer.build(num_tasks)
    return tf.function(lambda j, losses: _run(balancer, j, losses).weights, jit_compile=True)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_xla_matches_eager_where_supported(name):
    b, reference = METHODS[name](), METHODS[name]()
    if not b.supports_jit:
        assert name == "rlw_dirichlet"
        return
    # With two tasks PCGrad's random task order cannot change its result.
    num_tasks = 2 if name == "log_pcgrad" else 3
    step = _compiled(b, num_tasks)
    if name == "rlw":
        # XLA draws random numbers with another algorithm: RLW's weights are
        # checked against the softmax of the normal draws XLA itself makes.
        generator = keras.random.SeedGenerator(1)
        draw = tf.function(
            lambda: keras.ops.softmax(keras.random.normal((3,), seed=generator)), jit_compile=True
        )
    for jac, losses in _steps(num_tasks=num_tasks, steps=3):
        losses = losses.astype("float32")
        expected = draw() if name == "rlw" else _run(reference, jac, losses).weights
        np.testing.assert_allclose(step(jac, losses), expected, rtol=1e-5)


# ---------------------------------------------------------------- short fits
def _data():
    (x, y), _ = keras_mtl.datasets.synthetic.load_data(
        num_train=384, num_test=8, correlation=0.5, input_dim=12, seed=0
    )
    return x, y


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,))
    h = keras_mtl.layers.SharedBottom(units=(16,), name="trunk")(inputs)
    outputs = {
        t: keras.layers.Dense(1, name=t)(keras.layers.Dense(8, activation="relu")(h)) for t in TASKS
    }
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


def _task_mse(model, x, y):
    pred = model.predict(x, verbose=0, batch_size=384)
    return np.array([np.mean((pred[t] - y[t]) ** 2) for t in TASKS])


FIT_METHODS = [
    "uw",
    "dwa",
    "dtp",
    "rlw",
    "gls",
    "imtl_l",
    "log",
    "log_gradnorm",
    "log_pcgrad",
    "initial_loss_uw",
    "initial_loss",
    "initial_loss_famo",
    "famo",
    "gradnorm",
]


@pytest.mark.parametrize("name", FIT_METHODS)
def test_short_fit_lowers_both_task_losses(name):
    x, y = _data()
    model = _model()
    balancer = METHODS[name]() if name != "dwa" else balancers.DWA()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS, balancer=balancer)
    before = _task_mse(model, x, y)
    trainable = [np.array(v) for v in balancer.trainable_variables]
    history = model.fit(x, y, batch_size=64, epochs=4, shuffle=False, verbose=0)
    after = _task_mse(model, x, y)
    assert np.all(after < 0.8 * before), (name, before, after)
    for t in TASKS:
        assert np.all(np.isfinite(history.history[f"{t}_weight"]))
    # Trainable balancer variables (UW, IMTL-L, also wrapped) are trained by the model.
    for old, new in zip(trainable, balancer.trainable_variables, strict=True):
        assert np.all(np.abs(np.array(new) - old) > 1e-3), (name, old, new)
    if name == "uw":
        s = np.array(balancer.log_variances)
        # d/ds (exp(-s) L + s) = 1 - exp(-s) L: s moves from 0 towards log(L).
        target = np.log([history.history[f"{t}_loss"][-1] for t in TASKS])
        assert np.all(np.abs(s) > 1e-2)
        assert np.all(np.abs(s - target) < np.abs(target)), (s, target)
    if name == "dwa":
        weights = np.array([history.history[f"{t}_weight"] for t in TASKS])
        np.testing.assert_array_equal(weights[:, :2], 1.0)
        assert not np.allclose(weights[:, 2:], 1.0)
        np.testing.assert_allclose(weights.sum(0), 2.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["dwa", "famo", "initial_loss_famo"])
def test_keras_save_load_resume_continues_the_weight_trajectory(name, tmp_path):
    x, y = _data()
    model = _model()
    balancer = balancers.DWA() if name == "dwa" else METHODS[name]()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS, balancer=balancer)
    model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.balancer.get_config() == model.balancer.get_config()
    assert len(loaded.balancer.variables) == len(model.balancer.variables) > 0
    for a, b in zip(loaded.balancer.variables, model.balancer.variables, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    h_model = model.fit(x, y, batch_size=64, epochs=4, initial_epoch=2, shuffle=False, verbose=0)
    h_loaded = loaded.fit(x, y, batch_size=64, epochs=4, initial_epoch=2, shuffle=False, verbose=0)
    for t in TASKS:
        np.testing.assert_allclose(
            h_loaded.history[f"{t}_weight"], h_model.history[f"{t}_weight"], rtol=1e-6
        )
    if name == "dwa":
        assert not np.allclose(h_model.history["task_1_weight"], 1.0)
    for a, b in zip(loaded.balancer.variables, model.balancer.variables, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-7)


def test_dtp_measures_its_kpi_inside_the_training_step():
    x, y = _data()
    labels = {t: (y[t] > np.median(y[t])).astype("float32") for t in TASKS}
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    h = keras_mtl.layers.SharedBottom(units=(16,), name="trunk")(inputs)
    outputs = {t: keras.layers.Dense(1, activation="sigmoid", name=t)(h) for t in TASKS}
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)
    balancer = balancers.DTP(kpi={"task_1": "binary_accuracy"}, alpha=1.0, gamma=1.0)
    model.compile(optimizer="sgd", loss="binary_crossentropy", balancer=balancer)
    pred = model.predict(x, verbose=0)
    # task_2's labels are missing for the first half: the KPI uses task_1 only,
    # task_2 falls back to exp(-L) of its (masked) loss.
    sample_weight = {"task_1": np.ones(len(x)), "task_2": (np.arange(len(x)) >= 192) * 1.0}
    history = model.fit(
        x, labels, sample_weight=sample_weight, batch_size=len(x), epochs=1, verbose=0
    )
    accuracy = np.mean((pred["task_1"] > 0.5) == (labels["task_1"] > 0.5))
    p, t = pred["task_2"][192:], labels["task_2"][192:]
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    k = np.array([accuracy, np.exp(-bce)])
    np.testing.assert_allclose(history.history["task_1_kpi"], [accuracy], rtol=1e-5)
    np.testing.assert_allclose(
        [history.history["task_1_weight"][0], history.history["task_2_weight"][0]],
        -(1 - k) * np.log(k),
        rtol=1e-4,
    )


# ------------------------------------------------------------ tf.distribute
def _mirrored_report(name):
    """Run in a fresh process (`python -m tests.balancers.test_loss_methods_fit
    NAME`): fits with two logical CPUs and with one device on the same global
    batches and prints the largest differences as JSON."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    x, y = _data()

    def fit(strategy):
        with strategy.scope():
            model = _model()
            balancer = balancers.DWA() if name == "dwa" else METHODS[name]()
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS, balancer=balancer)
        history = model.fit(x, y, batch_size=128, epochs=3, shuffle=False, verbose=0)
        return model, history.history["task_1_weight"]

    mirrored, w_mirrored = fit(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    single, w_single = fit(tf.distribute.get_strategy())

    def diff(a, b):
        return max(
            [float(np.max(np.abs(np.array(u) - np.array(v)))) for u, v in zip(a, b, strict=True)]
            + [0]
        )

    return {
        "model": diff(mirrored.trainable_variables, single.trainable_variables),
        "balancer": diff(mirrored.balancer.variables, single.balancer.variables),
        "weights": diff(w_mirrored, w_single),
        "moved": diff(w_single, [1.0] * len(w_single)),
    }


@pytest.mark.parametrize("name", ["uw", "dwa"])
def test_mirrored_strategy_matches_a_single_device(name):
    report = json_report("-m", "tests.balancers.test_loss_methods_fit", name)
    assert report["model"] < 1e-5 and report["balancer"] < 1e-5, report
    assert report["weights"] < 1e-5 and report["moved"] > 1e-3, report


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(_mirrored_report(sys.argv[1])))
