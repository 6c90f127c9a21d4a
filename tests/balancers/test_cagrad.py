import cvxpy as cp
import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import CAGrad
from tests.balancers import gradient_checks as checks


def cagrad_primal(jac, c):
    """CAGrad's primal with cvxpy: max_d min_t <g_t, d> s.t. |d - g0| <= c |g0|."""
    g0 = jac.mean(axis=0)
    d = cp.Variable(jac.shape[1])
    t = cp.Variable()
    problem = cp.Problem(cp.Maximize(t), [jac @ d >= t, cp.norm(d - g0) <= c * np.linalg.norm(g0)])
    problem.solve(solver="CLARABEL")
    return d.value


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
def test_direction_matches_cvxpy_primal(num_tasks):
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, 15)) + 0.5 * rng.normal(size=(1, 15))
    for c, rescale in ((0.4, 1), (0.8, 0), (0.4, 2)):
        d, w = checks.run(CAGrad(c=c, rescale=rescale), jac, graph=True)
        factor = {0: 1.0, 1: 1 + c * c, 2: 1 + c}[rescale]
        expected = num_tasks * cagrad_primal(jac, c) / factor
        np.testing.assert_allclose(d, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
        np.testing.assert_allclose(d, w @ jac, rtol=1e-4, atol=1e-5)


def test_cvxpy_solver_matches_graph_solver():
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(4, 9)) + rng.normal(size=(1, 9))
    b = CAGrad(solver="cvxpy")
    d_cvx, _ = checks.run(b, jac, graph=True)
    d_graph, _ = checks.run(CAGrad(), jac)
    np.testing.assert_allclose(d_cvx, d_graph, rtol=1e-3, atol=1e-4)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 0.0


def test_zero_c_is_equal_weighting():
    d, w = checks.run(CAGrad(c=0.0), checks.REFERENCE_J)
    np.testing.assert_allclose(d, checks.REFERENCE_J.sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(w, [1.0, 1.0], rtol=1e-6)


def test_reference_jacobian_by_hand():
    # Two tasks: the dual is 1-D; brute force over a fine grid of w1.
    jac = checks.REFERENCE_J
    c = 0.4
    g0 = jac.mean(axis=0)
    grid = np.linspace(0, 1, 200001)
    gw = grid[:, None] * jac[0] + (1 - grid)[:, None] * jac[1]
    values = gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
    best = gw[np.argmin(values)]
    expected = 2 * (g0 + c * np.linalg.norm(g0) * best / np.linalg.norm(best)) / (1 + c * c)
    d, _ = checks.run(CAGrad(), jac)
    np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-4)


def test_properties():
    checks.check_permutation_equivariance(CAGrad)
    checks.check_finite(CAGrad)
    checks.check_graph_and_jit(CAGrad, num_tasks=(2, 4))


def test_config_and_validation():
    checks.check_config_round_trip(CAGrad(c=0.5, rescale=2, solver="cvxpy"), CAGrad)
    assert isinstance(balancers.get("cagrad"), CAGrad)
    assert CAGrad().c == 0.4 and CAGrad().rescale == 1
    for kwargs in ({"c": -1.0}, {"rescale": 3}, {"solver": "scipy"}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            CAGrad(**kwargs)
