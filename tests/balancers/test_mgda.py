import itertools

import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import MGDA, MGDAUB, solvers
from tests.balancers import gradient_checks as checks


def test_reference_value():
    d, w = checks.run(MGDA(), checks.REFERENCE_J)
    np.testing.assert_allclose(d, [0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(w, [0.6, 0.4], atol=1e-6)


def test_two_tasks_closed_form_is_clipped_to_the_simplex():
    # Sener & Koltun, Algorithm 1: gamma = clip((g2 - g1).g2 / |g1 - g2|^2, 0, 1).
    # Here g1 = [1, 0] is the min-norm point of the segment (unclipped: 1.4).
    for jac, weights in (
        ([[1.0, 0.0], [3.0, 1.0]], [1.0, 0.0]),
        ([[3.0, 1.0], [1.0, 0.0]], [0.0, 1.0]),
    ):
        d, w = checks.run(MGDA(), jac)
        np.testing.assert_allclose(w, weights, atol=1e-6)
        np.testing.assert_allclose(d, [1.0, 0.0], atol=1e-6)


def test_weights_against_dense_grid():
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(3, 6))
    _, w = checks.run(MGDA(), jac)
    steps = np.linspace(0, 1, 301)
    best = min(
        np.sum((np.array([a, b, 1 - a - b]) @ jac) ** 2)
        for a, b in itertools.product(steps, steps)
        if a + b <= 1
    )
    assert np.sum((w @ jac) ** 2) <= best + 1e-6


@pytest.mark.parametrize("num_tasks", [4, 10, 40])
def test_weights_against_cvxpy(num_tasks):
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, 30)) + rng.normal(size=(1, 30))
    d, w = checks.run(MGDA(), jac, graph=True)
    ref, ok = solvers.min_norm_weights_cvxpy(jac @ jac.T)
    assert ok
    assert np.sum(d**2) <= np.sum((ref @ jac) ** 2) * (1 + 1e-5) + 1e-10
    np.testing.assert_allclose(d, w @ jac, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_normalizations_against_numpy(normalization):
    rng = np.random.default_rng(1)
    jac = rng.normal(size=(3, 5)) * np.array([[1.0], [10.0], [0.1]])
    losses = np.array([0.5, 2.0, 1.5])
    norms = np.linalg.norm(jac, axis=1)
    scale = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    scaled = jac / scale[:, None]
    ref, ok = solvers.min_norm_weights_cvxpy(scaled @ scaled.T)
    d, w = checks.run(MGDA(normalization=normalization), jac, losses)
    np.testing.assert_allclose(w, ref, atol=1e-4)
    # As the official code: the weights multiply the raw losses.
    np.testing.assert_allclose(d, w @ jac, rtol=1e-5, atol=1e-6)


def test_cvxpy_solver_agrees_and_logs_failures():
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(4, 9))
    b = MGDA(solver="cvxpy")
    d, w = checks.run(b, jac, graph=True)
    d_ref, _ = checks.run(MGDA(), jac)
    np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-4)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 0.0
    assert b.supports_jit is False


def test_properties():
    checks.check_non_conflicting(MGDA, tol=1e-5)
    checks.check_permutation_equivariance(MGDA)
    checks.check_permutation_equivariance(lambda: MGDA(normalization="loss+"))
    checks.check_finite(MGDA)
    checks.check_finite(lambda: MGDA(normalization="loss+"))
    checks.check_graph_and_jit(MGDA, num_tasks=(2, 3, 6))


def test_mgda_ub_is_mgda_in_representation_mode():
    assert MGDAUB.preferred_gradient_mode == "representation"
    assert MGDA.preferred_gradient_mode is None
    d, w = checks.run(MGDAUB(), checks.REFERENCE_J)
    np.testing.assert_allclose(w, [0.6, 0.4], atol=1e-6)
    assert isinstance(balancers.get("mgda_ub"), MGDAUB)


def test_config_and_validation():
    checks.check_config_round_trip(MGDA(normalization="loss+", solver="cvxpy"), MGDA)
    checks.check_config_round_trip(MGDAUB(normalization="l2"), MGDAUB)
    with pytest.raises(ValueError, match="normalization"):
        MGDA(normalization="norm2")
    with pytest.raises(ValueError, match="solver"):
        MGDA(solver="ecos")


def test_cvxpy_failure_falls_back_to_the_graph_solver_and_is_counted(monkeypatch):
    # A failed host solve must leave the in-graph weights and add one to the
    # logged failure count per failed step (the count is what tells a user
    # that `solver="cvxpy"` is not doing its job).
    def failing(gram, *args, **kwargs):
        return np.full(gram.shape[0], np.nan), True

    monkeypatch.setattr(solvers, "min_norm_weights_cvxpy", failing)
    b = MGDA(solver="cvxpy")
    for step in (1, 2):
        d, w = checks.run(b, checks.REFERENCE_J)
        np.testing.assert_allclose(w, [0.6, 0.4], atol=1e-6)
        assert float(b.logs()[f"{b.name}_solver_failures"]) == step


@pytest.mark.parametrize("solver", ["graph", "cvxpy"])
@pytest.mark.parametrize("num_tasks, absent", [(2, [0]), (3, [1]), (4, [0, 2])])
def test_a_zero_gradient_is_left_out_of_the_hull(solver, num_tasks, absent):
    # A task without labels has a zero row; in the hull it was the min-norm
    # point (weight 1, direction 0) and no task trained.
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, 6))
    jac[absent] = 0.0
    present = [t for t in range(num_tasks) if t not in absent]
    d, w = checks.run(MGDA(solver=solver), jac)
    d_sub, w_sub = checks.run(MGDA(solver=solver), jac[present])
    np.testing.assert_allclose(w[absent], 0.0)
    np.testing.assert_allclose(w[present], w_sub, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d, d_sub, rtol=1e-4, atol=1e-6)
    assert np.all(jac[present] @ d > 0)
