"""Balancer and solver edge cases, called eagerly: error
paths, abstract hooks, calls before `build`, cvxpy statuses and failures,
degenerate inputs, and the matmul-backend fallbacks."""

import sys

import cvxpy as cp
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import (
    DBMTL,
    DTP,
    DWA,
    IMTL,
    IMTLL,
    MGDA,
    Balancer,
    EqualWeighting,
    InitialLossNormalization,
    NashMTL,
    UncertaintyWeighting,
    base,
    solvers,
)
from keras_mtl.balancers.gramian import GramianBalancer
from keras_mtl.balancers.log_loss import _LossTransform
from keras_mtl.gradients import matmul_backend
from tests.balancers import gradient_checks as checks

LOSSES = np.array([2.0, 0.0, 3.0], np.float32)  # task 1 has no labels in the batch


# ------------------------------------------------------------------ base.py


def test_calling_a_balancer_like_a_layer_points_to_aggregate():
    # Built or not: Keras's __call__ used to build it from the arguments'
    # shapes first and fail with "num_tasks=None".
    b = balancers.get("ew")
    message = (
        r"not called like a layer: call `EqualWeighting.aggregate\(jacobian, losses\)`. "
        r"Received: a call of `EqualWeighting` with 2 positional and 0 keyword arguments"
    )
    jac, losses = np.eye(2, dtype="float32"), np.ones(2, "float32")
    with pytest.raises(NotImplementedError, match=message):
        b(jac, losses)
    assert not b.built
    b.aggregate(jac, losses)
    for call in (b, b.call):
        with pytest.raises(NotImplementedError, match=message):
            call(jac, losses)


def test_a_taken_alias_is_refused_and_nothing_is_registered(monkeypatch):
    monkeypatch.setattr(base, "_ALIASES", dict(base._ALIASES))
    keras_objects = dict(keras.saving.get_custom_objects())

    class AliasClash(Balancer):
        def compute(self, jacobian, losses, representation=None):
            return balancers.BalanceResult(None, losses)

    message = (
        r"invalid value for `aliases` of `AliasClash`, expected names no other balancer "
        r"uses: 'ew' is already taken by `EqualWeighting`. "
        r"Received: aliases=\('fresh_alias_for_clash', 'ew'\)"
    )
    with pytest.raises(ValueError, match=message):
        base.register_balancer("fresh_alias_for_clash", "ew")(AliasClash)
    # Neither the free alias before the taken one nor the Keras name was kept.
    assert "fresh_alias_for_clash" not in balancers.available()
    assert type(balancers.get("ew")) is EqualWeighting
    assert keras.saving.get_custom_objects() == keras_objects
    # Registering a class again under its own alias is no clash.
    assert base.register_balancer("ew")(EqualWeighting) is EqualWeighting


def test_a_config_of_another_keras_object_is_refused():
    config = keras.saving.serialize_keras_object(keras.layers.Dense(2))
    message = r"describing a keras_mtl balancer. Received: config=\{.*'Dense'.*which describes a `Dense`, not a Balancer"
    with pytest.raises(ValueError, match=message):
        balancers.deserialize(config)
    with pytest.raises(ValueError, match=message):
        balancers.get(config)


# ------------------------------------------------- abstract hooks of subclasses


@pytest.mark.parametrize(
    "parent, hook, jacobian",
    [
        (Balancer, "compute", None),
        (GramianBalancer, "gramian_weights", checks.REFERENCE_J),
        (_LossTransform, "_transform", None),
    ],
)
def test_a_subclass_without_its_hook_says_so(parent, hook, jacobian):
    incomplete = type("Incomplete", (parent,), {})
    with pytest.raises(NotImplementedError, match=f"Incomplete must implement `{hook}`"):
        incomplete().aggregate(jacobian, np.array([1.0, 2.0], np.float32))


# ------------------------------------------------------------------- DB-MTL


def test_db_mtl_refuses_a_jacobian_width_unknown_when_traced():
    spec = [tf.TensorSpec((2, None), tf.float32), tf.TensorSpec((2,), tf.float32)]
    b = DBMTL()
    b.build(2)

    def direction(jacobian, losses):
        return b.aggregate(jacobian, losses).direction

    trace = tf.function(direction, input_signature=spec, autograph=False)
    with pytest.raises(
        ValueError,
        match=r"from the number of Jacobian columns, expected a Jacobian whose number of "
        r"columns is known when traced. Received: jacobian with shape \(2, None\)",
    ):
        trace.get_concrete_function()
    # Nothing was created or counted: an eager call still starts at step 1.
    assert b.moving_gradients is None and float(b.step) == 0.0
    d, _ = checks.run(b, [[2.0, 0.0], [0.0, 1.0]], [1.0, 0.5])
    np.testing.assert_allclose(d, [0.2, 0.2], rtol=1e-6)  # the class docstring's value
    # With its averages made, the width must be the one they have; unknown
    # would let a width of 1 broadcast against them.
    trace = tf.function(direction, input_signature=spec, autograph=False)
    with pytest.raises(
        ValueError,
        match=r"moving averages of 2 parameters, expected a Jacobian of shape \(2, 2\). "
        r"Received: jacobian with shape \(2, None\)",
    ):
        trace.get_concrete_function()


# ---------------------------------------------------------------------- DTP


def test_dtp_accuracy_with_sparse_labels_of_shape_batch_by_one():
    # Integer labels (batch, 1), as Keras users pass them to a softmax head:
    # "accuracy" resolves to sparse categorical accuracy, compared per
    # example (not broadcast to (batch, batch)). 3 of 4 right.
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 1])
    logits = rng.normal(size=(4, 3)) * 0.1
    logits[np.arange(4), [0, 1, 2, 0]] = 5.0  # the last one predicts class 0
    for kpi in ("accuracy", "sparse_categorical_accuracy"):
        b = DTP(kpi=kpi, alpha=1.0, gamma=2.0)
        b.set_task_names(["a"])
        b.observe({"a": labels[:, None]}, {"a": logits.astype("float32")}, None)
        w = np.asarray(b.aggregate(None, [1.0]).weights)
        np.testing.assert_allclose(w, [-((1 - 0.75) ** 2) * np.log(0.75)], rtol=1e-5)
        np.testing.assert_allclose(float(b.kpi_average[0]), 0.75, rtol=1e-6)


def test_dtp_logs_nothing_before_build_or_without_task_names():
    b = DTP()
    assert b.logs() == {}
    b.aggregate(None, [0.5, 2.0])
    assert b.logs() == {}  # standalone: no task names to key the KPIs by
    b.set_task_names(["a", "b"])
    logs = b.logs()
    np.testing.assert_allclose([logs["a_kpi"], logs["b_kpi"]], np.exp([-0.5, -2.0]), rtol=1e-6)


# ---------------------------------------------------------------------- DWA


def test_dwa_epoch_begin_before_build_is_a_no_op():
    b = DWA()
    b.on_epoch_begin(3)
    assert not b.built
    np.testing.assert_array_equal(b.aggregate(None, [1.0, 2.0]).weights, [1.0, 1.0])
    # Built by that first step with the initial epoch state, not epoch 3's.
    assert float(b.epoch_ended) == 1.0 and float(b.completed_epochs) == 0.0
    assert float(b.epoch_steps) == 1.0


# ------------------------------------------- auxiliary losses before `build`


def _value_and_gradient(balancer, losses):
    with tf.GradientTape() as tape:
        value = balancer.auxiliary_loss(losses)  # builds the balancer
    (grad,) = tape.gradient(value, balancer.trainable_variables)
    return float(value), np.asarray(grad)


def test_imtl_gradient_mode_has_no_auxiliary_loss():
    b = IMTL(mode="gradient")
    assert float(b.auxiliary_loss(LOSSES)) == 0.0
    assert b.trainable_variables == []


def test_imtl_hybrid_auxiliary_loss_before_build():
    # s = 0: sum over the labelled tasks of exp(s) L - s = 2 + 3; gradient
    # exp(s) L - 1 there, 0 for the task without labels.
    b = IMTL()
    value, grad = _value_and_gradient(b, LOSSES)
    assert b.num_tasks == 3
    np.testing.assert_allclose(value, 5.0, rtol=1e-6)
    np.testing.assert_allclose(grad, [1.0, 0.0, 2.0], rtol=1e-6)


def test_imtl_l_auxiliary_loss_before_build():
    b = IMTLL(initial_scale=np.log(2.0))
    value, grad = _value_and_gradient(b, LOSSES)
    # 2 * 2 - log 2 + 2 * 3 - log 2; gradient 2 L - 1 on the labelled tasks.
    np.testing.assert_allclose(value, 10.0 - 2.0 * np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(grad, [3.0, 0.0, 5.0], rtol=1e-6)


def test_uncertainty_weighting_auxiliary_loss_before_build():
    b = UncertaintyWeighting(regression_form=True, initial_log_variance=np.log(2.0))
    value, grad = _value_and_gradient(b, LOSSES)
    # 0.5 (L / 2 + log 2) summed over the labelled tasks; gradient 0.5 (1 - L / 2).
    np.testing.assert_allclose(value, 1.25 + np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(grad, [0.0, 0.0, -0.25], atol=1e-7)


def test_loss_transform_auxiliary_loss_before_build_builds_itself_and_inner():
    # The transform reads its own state (the initial losses, 1 until set):
    # the inner uncertainty weighting sees L / 1 and gives sum L + s = 5.
    b = InitialLossNormalization(UncertaintyWeighting())
    value, grad = _value_and_gradient(b, LOSSES)
    assert b.built and b.inner.built and b.inner.num_tasks == 3
    np.testing.assert_allclose(value, 5.0, rtol=1e-6)
    np.testing.assert_allclose(grad, [-1.0, 0.0, -2.0], rtol=1e-6)


# ------------------------------------------------------------------ Nash-MTL


def _nash_reference(jac):
    """The bargaining solution alpha_i (G alpha)_i = 1 in float64, from
    cvxpy's single convex problem on the normalised Gramian."""
    gram = jac.astype(np.float64) @ jac.T.astype(np.float64)
    n = np.linalg.norm(gram)
    beta, ok = solvers.nash_weights_exact_cvxpy(gram / n)
    assert ok
    return beta / np.sqrt(n), gram


@pytest.mark.parametrize("scale", [1e-10, 1e10, 1e20])
def test_nash_cvxpy_solver_at_extreme_gradient_scales(scale):
    # The official problem keeps n = |G|_F in the constraint; its iterates
    # ~1 / sqrt(n) left the solver failing at 1e-10 and 98 % off at 1e10; at
    # 1e20, G overflows float32 and NashMTL passes n as |G / s^2|_F and s.
    rng = np.random.default_rng(3)
    jac = (scale * (rng.normal(size=(3, 8)) + rng.normal(size=(1, 8)))).astype(np.float32)
    expected, gram = _nash_reference(jac)
    b = NashMTL(max_norm=0.0, solver="cvxpy")
    d, alpha = checks.run(b, jac)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 0.0
    np.testing.assert_allclose(alpha, expected, rtol=1e-3)
    np.testing.assert_allclose(alpha * (gram @ alpha), 1.0, rtol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(d), np.sqrt(3.0), rtol=1e-3)


def test_nash_cvxpy_sequence_starts_where_its_linearisation_is_defined():
    # G 1 = [-1.98, 6.02]: at the default start (ones) the first task's
    # (G a)_1 is negative and log((G a)_1) has no linearisation; d = [0, 1]
    # improves both tasks, so a solution exists and must be found.
    jac = np.array([[1.0, 0.1], [-3.0, 0.1]])
    expected, gram = _nash_reference(jac)
    n = np.linalg.norm(gram)
    alpha, ok = solvers.nash_weights_cvxpy(gram / n, normalization=n)
    assert ok
    np.testing.assert_allclose(alpha, expected, rtol=1e-4)
    b = NashMTL(max_norm=0.0, solver="cvxpy")
    _, weights = checks.run(b, jac)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 0.0
    np.testing.assert_allclose(weights, expected, rtol=1e-3)


def test_nash_cvxpy_without_a_solution_solves_nothing_and_keeps_the_weights(monkeypatch):
    # g_2 = -g_1: G 1 = 0 and no start makes G a > 0, so no convex problem
    # is set up; NashMTL keeps its previous weights and counts the failure.
    # (The min-norm weights are solved for, to look for a start.)
    nash_problems = []
    real = solvers._solve

    def spy(problem, *names):
        nash_problems.extend(names)  # only the Nash problems name their solvers
        return real(problem, *names)

    monkeypatch.setattr(solvers, "_solve", spy)
    alpha, ok = solvers.nash_weights_cvxpy(np.array([[1.0, -1.0], [-1.0, 1.0]]))
    assert not ok and nash_problems == []
    np.testing.assert_array_equal(alpha, [1.0, 1.0])
    b = NashMTL(max_norm=0.0, solver="cvxpy")
    _, first = checks.run(b, [[1.0, 0.5], [0.2, 1.0]])
    _, second = checks.run(b, [[1.0, 2.0], [-1.0, -2.0]])
    np.testing.assert_array_equal(second, first)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 1.0


def test_nash_cvxpy_stops_at_the_first_failed_problem(monkeypatch):
    calls = []

    def failing(problem, names):
        calls.append(names)
        return False

    monkeypatch.setattr(solvers, "_solve", failing)
    gram = np.diag([1.0, 4.0])
    alpha, ok = solvers.nash_weights_cvxpy(gram)
    assert not ok and len(calls) == 1
    # The start: ones, rescaled to the best multiple along its ray
    # (t^2 = T / 1^T G 1 = 2 / 5).
    np.testing.assert_allclose(alpha, np.sqrt(2.0 / 5.0) * np.ones(2), rtol=1e-12)


def test_nash_cvxpy_stops_when_the_iterate_stalls(monkeypatch):
    # A solver stuck at one point that is no solution: the second problem
    # returns the same point, and the sequence ends there instead of running
    # `num_iters` problems.
    stuck = np.array([2.0, 3.0])
    calls = []

    def stuck_solver(problem, names):
        calls.append(names)
        problem.variables()[0].value = stuck
        return True

    monkeypatch.setattr(solvers, "_solve", stuck_solver)
    alpha, ok = solvers.nash_weights_cvxpy(np.diag([1.0, 4.0]), num_iters=20, normalization=4.0)
    assert ok and len(calls) == 2
    np.testing.assert_allclose(alpha, stuck / 2.0, rtol=1e-12)  # b / sqrt(n)


def test_nash_logs_nothing_before_build():
    b = NashMTL()
    assert b.logs() == {}
    checks.run(b, checks.REFERENCE_J)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 0.0


# ------------------------------------------------------------------ solvers


def test_project_onto_simplex_accepts_integers():
    out = solvers.project_onto_simplex(np.array([2, 2, 0]))
    assert out.dtype == "float32"
    np.testing.assert_allclose(np.asarray(out), [0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(solvers.project_onto_simplex([3, 0, -1])), [1, 0, 0])


class _ScriptedProblem:
    """Stands for a cvxpy problem: each solver name raises or sets a status."""

    def __init__(self, script):
        self.script = script
        self.tried = []
        self.status = None

    def solve(self, solver):
        self.tried.append(solver)
        outcome = self.script[solver]
        if isinstance(outcome, BaseException):
            raise outcome
        self.status = outcome


def test_cvxpy_solve_skips_solvers_that_are_not_installed(monkeypatch):
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["SCS", "ECOS"])
    problem = _ScriptedProblem({"SCS": cp.OPTIMAL})
    assert solvers._solve(problem) is True
    assert problem.tried == ["SCS"]
    monkeypatch.setattr(cp, "installed_solvers", lambda: [])
    problem = _ScriptedProblem({})
    assert solvers._solve(problem) is False and problem.tried == []


@pytest.mark.parametrize(
    "error", [cp.error.SolverError("boom"), ValueError("nan"), ZeroDivisionError("0")]
)
def test_cvxpy_solve_moves_on_after_a_solver_error(monkeypatch, error):
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["CLARABEL", "OSQP", "SCS"])
    problem = _ScriptedProblem({"CLARABEL": error, "OSQP": cp.OPTIMAL_INACCURATE})
    assert solvers._solve(problem) is True
    assert problem.tried == ["CLARABEL", "OSQP"]


def test_cvxpy_solve_fails_when_no_solver_reaches_an_optimum(monkeypatch):
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["CLARABEL", "OSQP", "SCS"])
    script = {"CLARABEL": cp.INFEASIBLE, "OSQP": cp.SOLVER_ERROR, "SCS": cp.error.SolverError()}
    problem = _ScriptedProblem(script)
    assert solvers._solve(problem) is False
    assert problem.tried == ["CLARABEL", "OSQP", "SCS"]
    # Other exceptions are bugs, not solver failures: they are not swallowed.
    problem = _ScriptedProblem({"CLARABEL": KeyError("bug")})
    with pytest.raises(KeyError, match="bug"):
        solvers._solve(problem)


def _report_status(monkeypatch, status):
    """Every cvxpy solve runs as usual, then reports `status`."""
    real = cp.Problem.solve

    def solve(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        self._status = status
        return out

    monkeypatch.setattr(cp.Problem, "solve", solve)


def test_min_norm_cvxpy_accepts_an_inaccurate_optimum(monkeypatch):
    # Orthogonal gradients of norms 1 and 2: w = [0.8, 0.2] (w ∝ 1 / |g|^2).
    _report_status(monkeypatch, cp.OPTIMAL_INACCURATE)
    weights, ok = solvers.min_norm_weights_cvxpy(np.diag([1.0, 4.0]))
    assert ok
    np.testing.assert_allclose(weights, [0.8, 0.2], atol=1e-6)


def test_mgda_cvxpy_failure_falls_back_to_the_in_graph_min_norm_point(monkeypatch):
    # No cvxpy solver reaches an optimum: the reference weights are uniform
    # and flagged, and MGDA returns the in-graph min-norm point of the
    # reference Jacobian, [0.6, 0.4] with direction [0, 1, 1], and counts it.
    _report_status(monkeypatch, cp.INFEASIBLE_INACCURATE)
    weights, ok = solvers.min_norm_weights_cvxpy(np.diag([1.0, 4.0]))
    assert not ok
    np.testing.assert_array_equal(weights, [0.5, 0.5])
    b = MGDA(solver="cvxpy")
    d, w = checks.run(b, checks.REFERENCE_J)
    np.testing.assert_allclose(w, [0.6, 0.4], atol=1e-6)
    np.testing.assert_allclose(d, [0.0, 1.0, 1.0], atol=1e-5)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 1.0


# ----------------------------------------------------------- matmul backend


@pytest.fixture
def fresh_backend(monkeypatch):
    """`onednn_cpu_matmuls` with an empty cache, no GPU, and oneDNN on."""
    from tensorflow.python.util import _pywrap_util_port

    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: [])
    monkeypatch.setattr(_pywrap_util_port, "IsMklEnabled", lambda: True)
    matmul_backend.onednn_cpu_matmuls.cache_clear()
    yield matmul_backend.onednn_cpu_matmuls
    matmul_backend.onednn_cpu_matmuls.cache_clear()


def test_onednn_matmuls_are_reported_without_a_gpu(fresh_backend):
    assert fresh_backend() is True


def test_a_visible_gpu_runs_the_products_whatever_onednn_does(fresh_backend, monkeypatch):
    gpu = tf.config.LogicalDevice("/device:GPU:0", "GPU")
    monkeypatch.setattr(
        tf.config, "list_logical_devices", lambda kind=None: [gpu] if kind == "GPU" else []
    )
    assert fresh_backend() is False


def test_without_the_private_module_the_eigen_path_is_kept(fresh_backend, monkeypatch):
    import tensorflow.python.util as util

    monkeypatch.delattr(util, "_pywrap_util_port")
    monkeypatch.setitem(sys.modules, "tensorflow.python.util._pywrap_util_port", None)
    assert fresh_backend() is False
