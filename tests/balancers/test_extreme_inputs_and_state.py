"""Defects found in review: float32 overflow of the Gramian, state spoiled by a
standalone call on non-finite inputs, UPGrad's and DualProj's tiny-Gramian
rule, LogLoss around learned loss scales, AlignedMTL on a non-finite Gramian."""

import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import solvers

# ------------------------------------------------------- Gramian overflow


def _rows(norms, seed=0):
    """Conflicting rows of the given norms (float32)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(len(norms), 40))
    rows[1] -= 1.5 * rows[0]  # some conflict
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows * np.asarray(norms)[:, None]


GRAMIAN_METHODS = {
    "pcgrad": lambda: balancers.PCGrad(seed=3),
    "gradvac": lambda: balancers.GradVac(seed=3),
    "mgda": lambda: balancers.MGDA(),
    "mgda_l2": lambda: balancers.MGDA(normalization="l2"),
    "mgda_loss+": lambda: balancers.MGDA(normalization="loss+"),
    "mgda_ub": lambda: balancers.MGDAUB(),
    "cagrad": lambda: balancers.CAGrad(),
    "imtl": lambda: balancers.IMTL(),
    "imtl_g": lambda: balancers.IMTL(mode="gradient"),
    "nash_mtl": lambda: balancers.NashMTL(max_norm=0.0),
    "aligned_mtl": lambda: balancers.AlignedMTL(),
    "upgrad": lambda: balancers.UPGrad(),
    "dualproj": lambda: balancers.DualProj(),
}


@pytest.mark.parametrize("factor", [1e20, 1e-25], ids=["overflow", "underflow"])
@pytest.mark.parametrize("method", sorted(GRAMIAN_METHODS))
def test_gramian_methods_are_exact_where_the_gramian_leaves_float32(method, factor):
    # Norms 1e20 and 1e19: J J^T overflows float32 (gave NaN or wrong finite
    # weights); 1e-25: it underflows to 0 (the gradients looked like zero).
    unit = _rows([1.0, 0.1, 0.5])
    losses = np.array([1.0, 2.0, 0.5], "float32")
    huge = (unit * factor).astype("float32")
    result = GRAMIAN_METHODS[method]().aggregate(huge, losses)
    reference = GRAMIAN_METHODS[method]().aggregate((huge / factor).astype("float32"), losses)
    weights, direction = np.asarray(result.weights, float), np.asarray(result.direction, float)
    assert np.all(np.isfinite(weights)) and np.all(np.isfinite(direction))
    expected_weights = np.asarray(reference.weights, float)
    expected_direction = np.asarray(reference.direction, float) * factor
    if method == "nash_mtl":
        # Nash-MTL's weights scale as 1 / |g| and its direction not at all.
        expected_weights, expected_direction = (
            expected_weights / factor,
            expected_direction / factor,
        )
    scale = np.max(np.abs(expected_weights))
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-5 * scale)
    scale = np.max(np.abs(expected_direction))
    np.testing.assert_allclose(direction, expected_direction, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("method", ["cagrad", "mgda", "nash_mtl", "upgrad"])
def test_gramian_overflow_is_handled_in_a_graph(method):
    unit = _rows([1.0, 0.1, 0.5])
    losses = tf.constant([1.0, 2.0, 0.5])
    big, small = GRAMIAN_METHODS[method](), GRAMIAN_METHODS[method]()
    result = tf.function(big.aggregate)(tf.constant(unit * 1e20, tf.float32), losses)
    reference = tf.function(small.aggregate)(tf.constant(unit, tf.float32), losses)
    factor = 1e20 if method == "nash_mtl" else 1.0
    np.testing.assert_allclose(
        np.asarray(result.weights, float) * factor, reference.weights, rtol=1e-5
    )


def test_gradnorm_stays_finite_for_huge_gradients():
    # sqrt(sum(J^2)) overflowed: NaN weights from the first update on.
    b = balancers.GradNorm(jacobian_scope="shared")
    jac = _rows([1e20, 1e19]).astype("float32")
    for _ in range(2):
        result = b.aggregate(jac, np.array([1.0, 2.0], "float32"))
        assert np.all(np.isfinite(result.weights)) and np.all(np.isfinite(result.direction))
    assert np.all(np.isfinite(b.weights_state))


@pytest.mark.parametrize("num_tasks", [2, 5])
def test_scaled_gramian_leaves_the_usual_path_untouched(num_tasks):
    rng = np.random.default_rng(1)
    for jac in (rng.normal(size=(num_tasks, 300)), 1e-12 * rng.normal(size=(num_tasks, 300))):
        jac = tf.constant(jac, tf.float32)
        gram, scale = solvers.scaled_gramian(jac)
        assert float(scale) == 1.0
        np.testing.assert_array_equal(gram, solvers.gramian(jac))
        gram, scale = tf.function(solvers.scaled_gramian)(jac)
        assert float(scale) == 1.0
        np.testing.assert_array_equal(gram, tf.function(solvers.gramian)(jac))
    # A zero Jacobian stays zero with scale 1; a non-finite one stays non-finite.
    gram, scale = solvers.scaled_gramian(np.zeros((2, 3), "float32"))
    assert float(scale) == 1.0 and not np.any(gram)
    gram, _ = solvers.scaled_gramian(np.array([[np.inf, 1.0], [1.0, 1.0]], "float32"))
    assert not np.all(np.isfinite(gram))


@pytest.mark.parametrize("normalization", ["loss", "loss+"])
def test_mgda_loss_normalisation_of_tiny_losses_is_finite(normalization):
    # Two losses of 1e-25 (two tasks fitted to rounding): L_i L_j was 0 in
    # float32 and the normalised Gramian NaN, although every input is finite.
    jac = np.array([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3]], "float32")
    tiny = balancers.MGDA(normalization=normalization).aggregate(jac, [1e-25, 1e-25])
    unit = balancers.MGDA(normalization=normalization).aggregate(jac, [1.0, 1.0])
    np.testing.assert_allclose(tiny.weights, unit.weights, rtol=1e-6)
    np.testing.assert_allclose(tiny.direction, unit.direction, rtol=1e-6)


# -------------------------------------------- non-finite standalone inputs


STATEFUL = {
    "gradnorm": lambda: balancers.GradNorm(),
    "db_mtl": lambda: balancers.DBMTL(),
    "dtp": lambda: balancers.DTP(),
    "dwa": lambda: balancers.DWA(steps_per_epoch=1),
    "famo": lambda: balancers.FAMO(),
    "log_db_mtl": lambda: balancers.LogLoss(balancers.DBMTL()),
}


def _good_steps():
    rng = np.random.default_rng(2)
    return [
        (rng.normal(size=(2, 6)).astype("float32"), rng.uniform(0.5, 2.0, 2).astype("float32"))
        for _ in range(3)
    ]


@pytest.mark.parametrize("argument", ["jacobian", "losses"])
@pytest.mark.parametrize("method", sorted(STATEFUL))
def test_a_standalone_call_on_nonfinite_input_raises_and_keeps_the_state(method, argument):
    steps = _good_steps()
    b = STATEFUL[method]()
    b.aggregate(*steps[0])
    before = [np.array(v) for v in b.non_trainable_variables]
    jac, losses = (x.copy() for x in steps[1])
    if argument == "jacobian":
        jac[1, 2] = np.inf
    else:
        losses[0] = np.nan
    with pytest.raises(ValueError, match=rf"Expected finite `{argument}`.*Received: {argument}"):
        b.aggregate(jac, losses)
    for saved, v in zip(before, b.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(saved, np.array(v), err_msg=v.path)
    # It works on as if the bad call had never been made.
    result = b.aggregate(*steps[1])
    fresh = STATEFUL[method]()
    fresh.aggregate(*steps[0])
    expected = fresh.aggregate(*steps[1])
    np.testing.assert_allclose(result.weights, expected.weights, rtol=1e-6)
    np.testing.assert_allclose(result.direction, expected.direction, rtol=1e-6)


def test_inside_a_graph_nonfinite_inputs_reach_the_balancer():
    # The engine calls `aggregate` in a graph and restores the state itself
    # under nonfinite="skip": no check (and no error) there.
    b = balancers.DBMTL()
    jac, losses = _good_steps()[0]
    b.aggregate(jac, losses)
    jac[0, 0] = np.nan
    result = tf.function(b.aggregate)(tf.constant(jac), tf.constant(losses))
    assert not np.all(np.isfinite(result.direction))


def test_balancers_without_state_still_pass_nonfinite_values_through():
    jac = np.array([[np.nan, 1.0], [1.0, 0.0]], "float32")
    for name in ("ew", "upgrad", "pcgrad"):
        result = balancers.get(name).aggregate(jac, np.ones(2, "float32"))
        assert np.isnan(np.asarray(result.direction)[0])


def test_aligned_mtl_gives_nan_for_a_nonfinite_gramian_instead_of_failing():
    # TensorFlow's eigh raised InvalidArgumentError, in a graph too, so the
    # training step failed instead of being skipped under nonfinite="skip".
    jac = tf.constant([[np.nan, 1.0, 2.0], [1.0, 0.0, 1.0]], tf.float32)
    result = tf.function(balancers.AlignedMTL().aggregate)(jac, tf.ones(2))
    assert np.all(np.isnan(result.weights))
    result = balancers.AlignedMTL().aggregate(np.array([[2.0, 0.0], [0.0, 1.0]]), np.ones(2))
    np.testing.assert_allclose(result.direction, [1.0, 1.0], rtol=1e-6)


# ------------------------------------------------- tiny Gramians (torchjd)


@pytest.mark.parametrize("cls", [balancers.UPGrad, balancers.DualProj])
def test_tiny_gramians_are_projected_not_averaged(cls):
    # torchjd zeroes a Gramian of trace below 1e-4 and returns the mean
    # weights; here the trace normalisation holds at every scale.
    jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], "float32")
    weights = np.asarray(cls().aggregate(jac, np.ones(2)).weights)
    tiny = np.asarray(cls().aggregate(jac * 1e-6, np.ones(2)).weights)  # trace 5.4e-11
    np.testing.assert_allclose(tiny, weights, rtol=1e-5)
    assert np.abs(weights - 0.5).max() > 0.05  # not the mean weights
    direction = np.asarray(cls().aggregate(jac * 1e-6, np.ones(2)).direction)
    # Conflicts with no task (up to the effect of the ridge `reg_eps`).
    bound = 1e-3 * np.linalg.norm(jac, axis=1) * np.linalg.norm(direction)
    assert np.all(jac @ direction >= -bound)
    zero = np.asarray(cls().aggregate(np.zeros((2, 3)), np.ones(2)).weights)
    np.testing.assert_allclose(zero, [0.5, 0.5], rtol=1e-6)


# ------------------------------------------- LogLoss around loss scales


@pytest.mark.parametrize(
    "inner",
    [
        lambda: balancers.UncertaintyWeighting(),
        lambda: balancers.UncertaintyWeighting(regression_form=True),
        lambda: "uw",
        lambda: balancers.IMTLL(),
        lambda: balancers.IMTL(),
        lambda: balancers.InitialLossNormalization(balancers.UncertaintyWeighting()),
    ],
)
def test_log_loss_refuses_inner_balancers_with_learned_loss_scales(inner):
    with pytest.raises(ValueError, match="Received an invalid value for `inner`.*no minimum"):
        balancers.LogLoss(inner())
    with pytest.raises(ValueError, match="`inner`"):
        balancers.deserialize({"class_name": "log", "config": {"inner": "imtl_l"}})


def test_log_loss_keeps_gradient_methods_and_wrappers_of_bounded_methods():
    for inner in (balancers.IMTL(mode="gradient"), balancers.PCGrad(seed=0), "ew", None):
        balancers.LogLoss(inner)
    # Normalised losses are positive: uncertainty weighting is fine there.
    balancers.InitialLossNormalization(balancers.UncertaintyWeighting())


def test_uncertainty_weighting_on_negative_losses_has_no_minimum():
    # Why: d/ds [exp(-s) L + s] = 1 - exp(-s) L > 0 for every s when L < 0,
    # so gradient descent on s never stops and exp(-s) grows without bound.
    s = np.linspace(-30.0, 30.0, 61)
    assert np.all(1.0 - np.exp(-s) * np.log(0.5) > 0)
