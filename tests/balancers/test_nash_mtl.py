import cvxpy as cp
import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import NashMTL, solvers
from tests.balancers import gradient_checks as checks


def official_nash_step(jac, previous, num_iters=20):
    """The official NashMTL weight step (AvivNavon/nash-mtl, methods/weight_methods.py),
    transcribed with cvxpy and CLARABEL in place of ECOS: the Gramian divided by
    its Frobenius norm `n` in the objective and in the linearisation, `n`
    kept in the constraint, the official stopping rules and warm start."""
    gtg = jac @ jac.T
    n = np.linalg.norm(gtg)
    gtg = gtg / n
    num = len(gtg)
    alpha_t = np.asarray(previous, dtype=np.float64)
    for _ in range(num_iters):
        a = cp.Variable(num, nonneg=True)
        slope = 1 / alpha_t + (1 / (gtg @ alpha_t)) @ gtg
        g_a = gtg @ a
        constraints = [-cp.log(a[i] * n) - cp.log(g_a[i]) <= 0 for i in range(num)]
        objective = cp.sum(g_a) + slope @ (a - alpha_t) / n
        cp.Problem(cp.Minimize(objective), constraints).solve(solver="CLARABEL")
        new = a.value
        if (
            new is None
            or np.linalg.norm(gtg @ alpha_t - 1 / (alpha_t + 1e-10)) < 1e-3
            or np.linalg.norm(new - alpha_t) < 1e-6
        ):
            break
        alpha_t = new
    return alpha_t


@pytest.mark.parametrize("scale", [1.0, 1e-2, 1e2])
def test_weights_match_the_official_step_at_any_gradient_scale(scale):
    # The official alpha solves alpha_i <g_i, d> = 1 on the raw gradients, so
    # |d| = sqrt(T) whatever the scale and the weights scale like 1 / |g|.
    rng = np.random.default_rng(7)
    jac = scale * (rng.normal(size=(3, 10)) + 1.0)
    expected = official_nash_step(jac, np.ones(3))
    d, alpha = checks.run(NashMTL(max_norm=0.0), jac)
    np.testing.assert_allclose(alpha, expected, rtol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(d), np.sqrt(3.0), rtol=1e-4)
    # With the default max_norm=1 the shared update has norm 1 at every scale.
    d_clipped, _ = checks.run(NashMTL(), jac)
    np.testing.assert_allclose(np.linalg.norm(d_clipped), 1.0, rtol=1e-5)
    # The cvxpy path runs the official sequence of problems (for sqrt(n) times its iterates).
    _, alpha_seq = checks.run(NashMTL(max_norm=0.0, solver="cvxpy"), jac, graph=True)
    np.testing.assert_allclose(alpha_seq, expected, rtol=1e-3)


def test_torchjd_reference_value_with_small_gradients():
    # torchjd's NashMTL example (adapted from the official code) gives
    # [0.0542, 0.7061, 0.7061] for J = [[-4, 1, 1], [6, 1, 1]]; the official
    # direction does not depend on the scale of J.
    for scale in (1.0, 1e-2):
        d, _ = checks.run(NashMTL(), scale * checks.REFERENCE_J)
        np.testing.assert_allclose(d, [0.0542, 0.7061, 0.7061], atol=2e-4)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
def test_bargaining_condition_and_cvxpy(num_tasks):
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, 3 * num_tasks + 5)) + rng.normal(size=(1, 3 * num_tasks + 5))
    d, alpha = checks.run(NashMTL(max_norm=0.0), jac)
    gram = jac @ jac.T
    # alpha_i <g_i, d> = 1 on the raw gradients (what the official code solves).
    np.testing.assert_allclose(alpha * (gram @ alpha), 1.0, rtol=1e-4)
    np.testing.assert_allclose(d, alpha @ jac, rtol=1e-5, atol=1e-6)
    exact, ok = solvers.nash_weights_exact_cvxpy(gram)
    assert ok
    np.testing.assert_allclose(alpha, exact, rtol=1e-3)
    # The paper's sequence of convex problems, as the `solver="cvxpy"` path.
    b = NashMTL(max_norm=0.0, solver="cvxpy")
    _, alpha_seq = checks.run(b, jac, graph=True)
    np.testing.assert_allclose(alpha_seq, exact, rtol=2e-3)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 0.0


def test_max_norm_clips_the_direction_only():
    rng = np.random.default_rng(0)
    jac = 10.0 * (rng.normal(size=(3, 8)) + 2.0)
    d, alpha = checks.run(NashMTL(max_norm=1.0), jac)
    d_free, alpha_free = checks.run(NashMTL(max_norm=0.0), jac)
    assert np.linalg.norm(d_free) > 1.0
    np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-5)
    np.testing.assert_allclose(d, d_free / np.linalg.norm(d_free), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alpha, alpha_free, rtol=1e-6)
    # As in the official code and LibMTL, any max_norm <= 0 means no clipping.
    d_negative, _ = checks.run(NashMTL(max_norm=np.float32(-1.0)), jac)
    np.testing.assert_allclose(d_negative, d_free, rtol=1e-6)


def test_max_norm_does_not_lengthen_a_short_direction():
    # The official code clips (clip_grad_norm_): a direction already shorter
    # than max_norm (the unclipped one has norm sqrt(T)) is left as is.
    jac = 0.01 * np.array([[1.0, 0.5, 0.0], [0.2, 1.0, 0.3]])
    d, _ = checks.run(NashMTL(max_norm=5.0), jac)
    d_free, _ = checks.run(NashMTL(max_norm=0.0), jac)
    np.testing.assert_allclose(np.linalg.norm(d_free), np.sqrt(2.0), rtol=1e-5)
    np.testing.assert_allclose(d, d_free, rtol=1e-6)


def test_update_every_reuses_weights():
    rng = np.random.default_rng(1)
    jacs = [rng.normal(size=(3, 6)) + 1.0 for _ in range(4)]
    b = NashMTL(update_every=2, max_norm=0.0)
    alphas = [checks.run(b, j)[1] for j in jacs]
    np.testing.assert_array_equal(alphas[0], alphas[1])
    np.testing.assert_array_equal(alphas[2], alphas[3])
    assert not np.allclose(alphas[0], alphas[2])
    _, fresh = checks.run(NashMTL(max_norm=0.0), jacs[2])
    np.testing.assert_allclose(alphas[2], fresh, rtol=1e-4)
    assert float(b.step) == 4.0


def test_conflict_keeps_previous_weights_and_counts():
    b = NashMTL(max_norm=0.0)
    good = np.array([[1.0, 0.5], [0.2, 1.0]])
    _, alpha = checks.run(b, good)
    _, alpha2 = checks.run(b, np.array([[1.0, 0.0], [-1.0, 0.0]]))
    np.testing.assert_array_equal(alpha, alpha2)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 1.0


def test_properties():
    checks.check_permutation_equivariance(lambda: NashMTL(max_norm=0.0))
    checks.check_finite(NashMTL)
    checks.check_graph_and_jit(NashMTL, num_tasks=(2, 4))
    checks.check_graph_and_jit(lambda: NashMTL(update_every=3), num_tasks=(3,))
    checks.check_state_restores(lambda: NashMTL(update_every=2))


def test_config_and_validation():
    checks.check_config_round_trip(
        NashMTL(max_norm=2.0, update_every=5, optim_niter=7, solver="cvxpy"), NashMTL
    )
    assert isinstance(balancers.get("nash_mtl"), NashMTL)
    # The official defaults: max_norm=1.0, update_weights_every=1, optim_niter=20.
    b = NashMTL()
    assert (b.max_norm, b.update_every, b.optim_niter, b.solver) == (1.0, 1, 20, "graph")
    for kwargs in (
        {"update_every": 0},
        {"optim_niter": -1},
        {"solver": "ecos"},
        {"max_norm": None},
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            NashMTL(**kwargs)


def test_tiny_gradients_are_solved_not_treated_as_zero():
    # At gradient scale 1e-12 the Gramian's entries (~1e-24) square to ~1e-48,
    # below float32's range: |G|_F must still be found (not 0), so the
    # bargaining solution is the one at scale 1 (|d| = sqrt(T)), not a failure.
    rng = np.random.default_rng(7)
    jac = rng.normal(size=(3, 10)) + 1.0
    d_ref, _ = checks.run(NashMTL(max_norm=0.0), jac)
    b = NashMTL(max_norm=0.0)
    d, _ = checks.run(b, 1e-12 * jac)
    np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-6)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 0.0


def test_nearly_opposite_gradients_still_have_a_bargaining_solution():
    # g1 = [1, 0.01], g2 = [-1, 0.01]: nearly opposite, but d = [0, 1] improves
    # both, so a solution exists. By symmetry alpha = [a, a] with
    # a^2 (G [1, 1])_i = a^2 * 2e-4 = 1, i.e. a = 1 / sqrt(2e-4), and
    # d = a (g1 + g2) = [0, 0.02 a] = [0, sqrt(2)]. Hand-derived.
    b = NashMTL(max_norm=0.0)
    d, alpha = checks.run(b, [[1.0, 0.01], [-1.0, 0.01]])
    np.testing.assert_allclose(alpha, [1 / np.sqrt(2e-4)] * 2, rtol=1e-3)
    np.testing.assert_allclose(d, [0.0, np.sqrt(2.0)], rtol=1e-3, atol=1e-4)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 0.0


@pytest.mark.parametrize("scale", [1e-6, 1e-3])
def test_second_step_at_small_gradient_scale_is_solved(scale):
    # The previous raw alpha (~1 / |g|, large here) warm-starts the solve on
    # the Frobenius-normalised Gramian, whose solution is O(1); the solver
    # rescales the start along its ray, without which damped Newton stops far
    # from the solution. Step two must satisfy alpha_i (G alpha)_i = 1 and
    # match a fresh solve.
    rng = np.random.default_rng(7)
    first, second = (scale * (rng.normal(size=(4, 10)) + 1.0) for _ in range(2))
    b = NashMTL(max_norm=0.0)
    checks.run(b, first)
    _, alpha = checks.run(b, second)
    np.testing.assert_allclose(alpha * (second @ second.T @ alpha), 1.0, rtol=1e-4)
    _, fresh = checks.run(NashMTL(max_norm=0.0), second)
    np.testing.assert_allclose(alpha, fresh, rtol=1e-4)


@pytest.mark.parametrize("ratio", [1e3, 1e7])
def test_gradient_norms_many_orders_apart_are_solved(ratio):
    # Dividing g_2 by r multiplies alpha_2 by r and leaves the rest (alpha_i
    # (G alpha)_i = 1 is invariant under g_i -> g_i / r, alpha_i -> r alpha_i).
    # An absolute threshold took r = 1e5 for Pareto stationarity before.
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(3, 50))
    _, alpha = checks.run(NashMTL(max_norm=0.0), jac)
    b = NashMTL(max_norm=0.0)
    _, alpha_r = checks.run(b, jac / [[1.0], [ratio], [1.0]])
    np.testing.assert_allclose(alpha_r, alpha * [1.0, ratio, 1.0], rtol=1e-4)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 0.0


def test_a_zero_gradient_has_no_bargaining_solution():
    # alpha_i <g_i, d> = 1 cannot hold for g_i = 0 (a task without labels in
    # the batch): a failure, and the previous weights stay.
    b = NashMTL(max_norm=0.0)
    _, alpha = checks.run(b, [[1.0, 0.5], [0.2, 1.0]])
    _, alpha2 = checks.run(b, [[1.0, 0.5], [0.0, 0.0]])
    np.testing.assert_array_equal(alpha, alpha2)
    assert float(b.logs()[f"{b.name}_solver_failures"]) == 1.0
