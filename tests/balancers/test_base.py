import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import EqualWeighting, StaticWeighting
from keras_mtl.balancers.base import check_integer, check_number

J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def test_get_by_alias_instance_and_config():
    assert isinstance(balancers.get("ew"), EqualWeighting)
    assert isinstance(balancers.get("EW"), EqualWeighting)
    assert isinstance(balancers.get(None), EqualWeighting)
    b = StaticWeighting([2.0, 1.0])
    assert balancers.get(b) is b
    again = balancers.get(balancers.serialize(b))
    assert isinstance(again, StaticWeighting) and again.weights_config == [2.0, 1.0]
    short = balancers.get({"class_name": "fixed", "config": {"weights": [1.0, 3.0]}})
    assert short.weights_config == [1.0, 3.0]


def test_unknown_identifiers():
    with pytest.raises(ValueError, match=r"expected one of \[.*'ew'.*\].*balancer='bogus'"):
        balancers.get("bogus")
    with pytest.raises(ValueError, match="Received: balancer=3 of type int"):
        balancers.get(3)


def test_equal_and_static_weighting_reference_values():
    ew = EqualWeighting().aggregate(J, [1.0, 1.0])
    np.testing.assert_allclose(ew.direction, [2.0, 2.0, 2.0])
    fixed = StaticWeighting([0.5, 2.0]).aggregate(J, [1.0, 1.0])
    np.testing.assert_allclose(fixed.direction, [10.0, 2.5, 2.5])
    np.testing.assert_allclose(fixed.weights, [0.5, 2.0])
    assert EqualWeighting().aggregate(None, [1.0, 2.0]).direction is None


def test_static_weighting_by_task_name():
    b = StaticWeighting({"b": 3.0})
    b.set_task_names(["a", "b"])
    np.testing.assert_allclose(b.aggregate(None, [1.0, 1.0]).weights, [1.0, 3.0])
    with pytest.raises(ValueError, match=r"unknown tasks \['c'\]"):
        StaticWeighting({"c": 1.0}).set_task_names(["a", "b"])
    with pytest.raises(ValueError, match="needs task names"):
        StaticWeighting({"a": 1.0}).aggregate(None, [1.0, 1.0])


@pytest.mark.parametrize("weights", [[-1.0, 1.0], [float("nan"), 1.0], ["a", 1.0]])
def test_static_weighting_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="Received an invalid value for `weights`"):
        StaticWeighting(weights)


def test_aggregate_validates_shapes():
    b = EqualWeighting()
    with pytest.raises(ValueError, match=r"Expected `losses` to be a vector.*\(2, 1\)"):
        b.aggregate(J, [[1.0], [1.0]])
    with pytest.raises(ValueError, match=r"num_tasks=3 rows.*\(2, 3\)"):
        b.aggregate(J, [1.0, 1.0, 1.0])
    b.aggregate(J, [1.0, 1.0])
    with pytest.raises(ValueError, match="built for 2 tasks"):
        b.aggregate(np.ones((3, 3)), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="Expected 3 weights"):
        StaticWeighting([1.0, 1.0]).aggregate(np.ones((3, 3)), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("name", ["ew", "cagrad", "db_mtl", "nash_mtl", "mgda"])
def test_a_jacobian_without_columns_is_refused(name):
    # CAGrad, DB-MTL and Nash-MTL raised TensorFlow's internal errors on (T, 0).
    with pytest.raises(ValueError, match=r"at least one column.*\(2, 0\)"):
        balancers.get(name).aggregate(np.zeros((2, 0)), [1.0, 2.0])


def test_gradient_method_needs_a_jacobian():
    class Needs(balancers.Balancer):
        requires_jacobian = True

    with pytest.raises(ValueError, match="needs the Jacobian.*jacobian=None"):
        Needs().aggregate(None, [1.0, 2.0])


def test_aggregate_runs_inside_tf_function():
    b = StaticWeighting([1.0, 0.5])
    fn = tf.function(lambda jac, losses: b.aggregate(jac, losses).direction, jit_compile=True)
    np.testing.assert_allclose(
        fn(tf.constant(J, tf.float32), tf.constant([1.0, 1.0])), [-1.0, 1.5, 1.5]
    )


# Each balancer built from NumPy scalars (or arrays) and from the equal Python values.
NUMPY_ARGS = [
    ("DWA", {"temperature": np.float32(2.0), "steps_per_epoch": np.int64(3)}),
    ("CAGrad", {"c": np.float32(0.5), "rescale": np.int64(2)}),
    (
        "NashMTL",
        {"max_norm": np.float64(2.0), "update_every": np.int64(2), "optim_niter": np.int32(5)},
    ),
    ("StaticWeighting", {"weights": np.array([1, 2], "float32")}),
    ("StaticWeighting", {"weights": {"a": np.float32(0.5), "b": np.int64(2)}}),
    ("PCGrad", {"seed": np.int64(3)}),
    ("RLW", {"concentration": np.float32(0.5), "seed": np.int32(1)}),
    ("GradVac", {"beta": np.float32(0.5), "seed": np.int64(1)}),
    ("GradDrop", {"leak": [np.float32(0.5), np.float64(0.0)], "seed": np.int64(2)}),
    ("FAMO", {"learning_rate": np.float32(0.5), "min_losses": np.zeros(2, "float32")}),
    ("DBMTL", {"beta": np.float32(0.5), "eps": np.float16(0.0), "num_params": np.int64(3)}),
    ("GradNorm", {"alpha": np.float32(1.0), "learning_rate": np.float64(0.5)}),
    ("DTP", {"gamma": np.int64(1), "alpha": np.float32(0.5)}),
    ("UncertaintyWeighting", {"initial_log_variance": np.float32(0.5)}),
]


def _python(value):
    if isinstance(value, dict):
        return {k: _python(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_python(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _no_numpy_values(config):
    if isinstance(config, dict):
        return all(_no_numpy_values(v) for v in config.values())
    if isinstance(config, list | tuple):
        return all(_no_numpy_values(v) for v in config)
    return not isinstance(config, np.generic | np.ndarray)


@pytest.mark.parametrize("name, kwargs", NUMPY_ARGS, ids=[n for n, _ in NUMPY_ARGS])
def test_numpy_scalars_are_accepted_and_stored_as_python_types(name, kwargs):
    cls = getattr(balancers, name)
    b = cls(name="b", **kwargs)
    config = b.get_config()
    assert config == cls(name="b", **{k: _python(v) for k, v in kwargs.items()}).get_config()
    assert _no_numpy_values(config)
    json.dumps(config)
    assert cls.from_config(config).get_config() == config


def test_check_number_and_check_integer():
    assert type(check_number("x", np.float32(0.5), "a float")) is float
    assert type(check_integer("n", np.uint8(4), "an integer")) is int
    for value in (True, np.bool_(True), "1", None, float("inf"), np.array([1.0])):
        with pytest.raises(ValueError, match=r"expected a float\. Received: x="):
            check_number("x", value, "a float")
    for value in (True, 2.5, 2.0, np.float32(2.0), "2"):
        with pytest.raises(ValueError, match=r"`n`, expected an integer\. Received: n="):
            check_integer("n", value, "an integer")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: balancers.DWA(temperature=np.float32(0.0)), r"temperature=np.float32\(0.0\)"),
        (
            lambda: balancers.NashMTL(update_every=np.float64(2.5)),
            r"update_every=np.float64\(2.5\)",
        ),
        (lambda: balancers.NashMTL(optim_niter=True), "optim_niter=True"),
        (lambda: balancers.CAGrad(rescale=np.int64(3)), r"rescale=np.int64\(3\)"),
        (lambda: balancers.PCGrad(seed=1.5), "seed=1.5"),
        (lambda: balancers.StaticWeighting(2.0), r"`weights`, expected .*Received: weights=2.0"),
        (lambda: balancers.StaticWeighting({"a": -1}), r"weights=\{'a': -1\}"),
        (lambda: balancers.FAMO(min_losses=0.0), "min_losses=0.0"),
    ],
)
def test_bad_numbers_name_the_argument_and_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# Every alias of the balancers in this package's base set, as the DESIGN's
# contract and the docstrings name them; a dropped alias breaks user configs.
ALIASES = [
    ("ew", "EqualWeighting"),
    ("equal", "EqualWeighting"),
    ("equal_weighting", "EqualWeighting"),
    ("fixed", "StaticWeighting"),
    ("static", "StaticWeighting"),
    ("static_weighting", "StaticWeighting"),
    ("imtl", "IMTL"),
    ("imtl_l", "IMTLL"),
    ("imtll", "IMTLL"),
    ("initial_loss", "InitialLossNormalization"),
    ("initial_loss_normalization", "InitialLossNormalization"),
    ("log", "LogLoss"),
    ("log_loss", "LogLoss"),
    ("mgda", "MGDA"),
    ("mgda_ub", "MGDAUB"),
    ("nash_mtl", "NashMTL"),
    ("nashmtl", "NashMTL"),
    ("pcgrad", "PCGrad"),
    ("rlw", "RLW"),
    ("random_loss_weighting", "RLW"),
    ("uw", "UncertaintyWeighting"),
    ("uncertainty", "UncertaintyWeighting"),
    ("uncertainty_weighting", "UncertaintyWeighting"),
    ("upgrad", "UPGrad"),
]


@pytest.mark.parametrize("alias, class_name", ALIASES)
def test_every_alias_names_its_class(alias, class_name):
    assert type(balancers.get(alias)) is getattr(balancers, class_name)
    assert alias in balancers.available()


def test_short_form_config_alias_is_case_insensitive():
    # As `get("EW")`: the short form's class name is an alias in any case.
    b = balancers.deserialize({"class_name": "Fixed", "config": {"weights": [1.0, 3.0]}})
    assert isinstance(b, StaticWeighting) and b.weights_config == [1.0, 3.0]


def test_static_weighting_accepts_zero_weights():
    # "Non-negative": a zero weight switches a task off, it is not an error.
    r = StaticWeighting([0.0, 2.0]).aggregate(J, [1.0, 1.0])
    np.testing.assert_allclose(r.weights, [0.0, 2.0])
    np.testing.assert_allclose(r.direction, [12.0, 2.0, 2.0])


# Non-default arguments: the copy made from the config must behave like the
# original from its first step (fresh state), not only have an equal config.
CONFIG_CASES = [
    ("IMTLL", {"initial_scale": 0.7}, False),
    ("UncertaintyWeighting", {"regression_form": True, "initial_log_variance": -0.5}, False),
    ("RLW", {"distribution": "dirichlet", "concentration": 0.3, "seed": 11}, False),
    ("PCGrad", {"seed": 12}, True),
    ("UPGrad", {"reg_eps": 0.5}, True),
    ("MGDA", {"normalization": "l2"}, True),
    ("MGDAUB", {"normalization": "loss"}, True),
    ("IMTL", {"mode": "gradient"}, True),
    ("NashMTL", {"max_norm": 0.0, "update_every": 3, "optim_niter": 5}, True),
    ("LogLoss", {"epsilon": 0.5}, False),
    ("InitialLossNormalization", {"inner": "fixed"}, False),
    ("StaticWeighting", {"weights": [2.0, 0.5, 1.0]}, False),
]


@pytest.mark.parametrize("name, kwargs, gradient", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_keeps_every_argument_and_the_copy_behaves_alike(name, kwargs, gradient):
    cls = getattr(balancers, name)
    original = cls(**kwargs)
    config = original.get_config()
    for key, value in kwargs.items():
        if key != "inner":
            assert config[key] == value, key
    copy = balancers.deserialize(balancers.serialize(original))
    rng = np.random.default_rng(0)
    for _ in range(2):
        jac = rng.normal(size=(3, 4)) + 0.5 if gradient else None
        losses = rng.uniform(0.5, 2.0, size=3)
        a, b = original.aggregate(jac, losses), copy.aggregate(jac, losses)
        np.testing.assert_allclose(np.asarray(a.weights), np.asarray(b.weights), rtol=1e-6)


@pytest.mark.parametrize("name", ["RLW", "PCGrad"])
def test_seed_generator_state_is_saved_and_restored(name):
    # Keras saves a layer's variables but not its seed generators' state; the
    # balancer saves it so that a resumed run continues the random sequence
    # instead of replaying it from the start.
    rng = np.random.default_rng(1)
    jacs = [rng.normal(size=(3, 5)) for _ in range(5)]
    first = getattr(balancers, name)(seed=4)
    for jac in jacs[:2]:
        first.aggregate(jac, np.ones(3))
    store = {}
    first.save_own_variables(store)
    expected = [np.asarray(first.aggregate(jac, np.ones(3)).weights) for jac in jacs[2:]]
    second = getattr(balancers, name)(seed=4)
    second.build(3)
    second.load_own_variables(store)
    got = [np.asarray(second.aggregate(jac, np.ones(3)).weights) for jac in jacs[2:]]
    np.testing.assert_array_equal(got, expected)
    # A fresh balancer replays the first draws, which differ: the state mattered.
    fresh = getattr(balancers, name)(seed=4)
    replay = [np.asarray(fresh.aggregate(jac, np.ones(3)).weights) for jac in jacs[2:]]
    assert not np.allclose(replay, expected)


def test_default_names_do_not_change_with_the_number_of_instances():
    # Log keys such as `<name>_solver_failures` are built from the name.
    first, second = balancers.get("nash_mtl"), balancers.get("nash_mtl")
    assert first.name == second.name == "nash_mtl"
    second.build(2)
    assert list(second.logs()) == ["nash_mtl_solver_failures"]
    assert balancers.get({"class_name": "nash_mtl", "config": {"name": "mine"}}).name == "mine"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"class_name": "nope", "config": {}}, r"class name among \['aligned_mtl'"),
        ({"class_name": "Dense", "config": {"units": 2}}, r"class name among \['aligned_mtl'"),
        ({"class_name": "PCGrad", "config": {"seed": "x"}}, r"seed.*Received.*'x'"),
    ],
)
def test_bad_config_dicts_are_value_errors_that_name_the_balancers(config, message):
    with pytest.raises(ValueError, match=message):
        balancers.get(config)
    with pytest.raises(ValueError, match=message):
        balancers.deserialize(config)


def test_loss_weighting_and_gradient_methods_declare_what_they_need():
    # The engine reads `requires_jacobian` to take one backward pass or per-task gradients.
    assert EqualWeighting.requires_jacobian is False
    assert StaticWeighting.requires_jacobian is False
    assert balancers.Balancer.requires_jacobian is False
    for name in ("pcgrad", "mgda", "db_mtl"):
        assert balancers.get(name).requires_jacobian is True, name
    # Loss-only methods give weights without a Jacobian.
    np.testing.assert_array_equal(EqualWeighting().aggregate(None, [3.0, 0.5]).weights, [1, 1])


def test_stateful_balancers_create_keras_variables_on_first_use():
    # No state before the first call (the number of tasks is not known); after it, Keras
    # variables that the call has written, which a model saves with its weights.
    b = balancers.get("famo")
    assert not b.built and b.variables == []
    losses = np.array([1.0, 2.0])
    b.aggregate(None, losses)
    assert b.built and b.num_tasks == 2 and b.variables
    assert all(isinstance(v, keras.Variable) for v in b.variables)
    state = {v.path: np.array(v) for v in b.variables}
    assert any(np.any(v != 0) for v in state.values())  # written by the call (step counts)
    b.aggregate(None, 0.5 * losses)  # the second call updates the same variables
    assert [v.path for v in b.variables] == list(state)
    assert any(not np.array_equal(state[v.path], np.array(v)) for v in b.variables)
    # `get_config` / `from_config` make an unbuilt copy with the same arguments.
    copy = type(b).from_config(b.get_config())
    assert not copy.built and copy.get_config() == b.get_config()
