import cvxpy as cp
import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import CAGrad, solvers
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
    # cvxpy runs through tf.numpy_function, which XLA cannot compile:
    # compile(jit_compile="auto") reads this to turn XLA off.
    assert CAGrad().supports_jit and CAGrad(solver="cvxpy").supports_jit is False
    for kwargs in ({"c": -1.0}, {"rescale": 3}, {"solver": "scipy"}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            CAGrad(**kwargs)


def official_cagrad(jac, c=0.4, rescale=1):
    """The official update (Cranial-XIX/CAGrad, `cagrad` and `overwrite_grad`)
    in float64, with the dual solved exactly by cvxpy instead of scipy."""
    num = jac.shape[0]
    gram = jac @ jac.T
    g0_norm = np.sqrt(gram.mean() + 1e-8)
    radius = c * g0_norm + 1e-8
    # The dual's minimiser does not change when G is divided by its mean
    # diagonal (which keeps CLARABEL well scaled).
    scale = np.trace(gram) / num
    w = cp.Variable(num)
    values, vectors = np.linalg.eigh(gram / scale)
    root = (vectors * np.sqrt(np.maximum(values, 0.0))).T
    objective = (gram / scale @ np.ones(num) / num) @ w + radius / np.sqrt(scale) * cp.norm(
        root @ w
    )
    cp.Problem(cp.Minimize(objective), [w >= 0, cp.sum(w) == 1]).solve(solver="CLARABEL")
    gw = w.value @ jac
    g = jac.mean(axis=0) + radius / (np.linalg.norm(gw) + 1e-8) * gw
    return num * g / {0: 1.0, 1: 1 + c * c, 2: 1 + c}[rescale]


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e3])
def test_direction_stays_in_the_ball_near_pareto_stationary_points(scale):
    # g3 = -(g1 + g2) in float32: a convex combination almost vanishes and
    # |g_w| is rounding noise. The official update is T (g0 + c|g0| u) / (1 + c^2)
    # with |u| <= 1, whatever u is; so must ours be.
    rng = np.random.default_rng(0)
    c = 0.4
    for _ in range(10):
        a, b, e = (scale * rng.normal(size=(3, 50))).astype(np.float32)
        jac = np.stack([a, b, -(a + b), e]).astype(np.float32)
        d, _ = checks.run(CAGrad(c=c), jac)
        g0 = jac.astype(np.float64).mean(axis=0)
        reference = official_cagrad(jac.astype(np.float64), c)
        # Both in the ball |d (1 + c^2) / T - g0| <= c |g0| (on its sphere
        # unless |g_w| is below the 1e-8 guard).
        radius = c * np.linalg.norm(g0)
        for direction in (d, reference):
            offset = np.linalg.norm(direction * (1 + c * c) / 4 - g0)
            assert offset <= radius * (1 + 1e-3), (offset, radius)


def test_matches_the_official_update_away_from_stationarity():
    rng = np.random.default_rng(4)
    jac = rng.normal(size=(3, 8)) + rng.normal(size=(1, 8))
    d, w = checks.run(CAGrad(), jac)
    np.testing.assert_allclose(d, w @ jac, rtol=1e-4, atol=1e-5)
    expected = official_cagrad(jac)
    np.testing.assert_allclose(d, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


@pytest.mark.parametrize("scale", [1e-9, 1e-4, 1e4])
def test_direction_scales_with_the_jacobian(scale):
    # The update is positively homogeneous in J (the dual's minimiser does not
    # depend on the scale of G, and lam = c |g0| / |g_w| is a ratio), so the
    # 1e-8 guard must act on the normalised scale: on the raw norms it would
    # shrink lam for gradients of norm ~1e-8 and below.
    rng = np.random.default_rng(5)
    jac = rng.normal(size=(3, 8)) + rng.normal(size=(1, 8))
    d, w = checks.run(CAGrad(), jac)
    d_scaled, w_scaled = checks.run(CAGrad(), scale * jac)
    np.testing.assert_allclose(d_scaled, scale * d, rtol=1e-4, atol=1e-4 * scale * np.abs(d).max())
    np.testing.assert_allclose(w_scaled, w, rtol=1e-4)


def test_a_failed_cvxpy_solve_falls_back_to_the_graph_solver_and_is_counted(monkeypatch):
    def broken(gram, c):
        return np.full(gram.shape[0], np.nan), False

    monkeypatch.setattr(solvers, "cagrad_weights_cvxpy", broken)
    rng = np.random.default_rng(6)
    jac = rng.normal(size=(3, 8)) + rng.normal(size=(1, 8))
    b = CAGrad(solver="cvxpy")
    d_graph, w_graph = checks.run(CAGrad(), jac)
    for failures in (1.0, 2.0):
        d, w = checks.run(b, jac)
        np.testing.assert_allclose(d, d_graph, rtol=1e-6)
        np.testing.assert_allclose(w, w_graph, rtol=1e-6)
        assert float(b.logs()[f"{b.name}_solver_failures"]) == failures
