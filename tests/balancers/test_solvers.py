"""In-graph solvers against cvxpy, NumPy and brute force."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from keras_mtl.balancers import solvers

# Graph mode: the solvers' loops are slow op by op in eager mode.
min_norm = tf.function(solvers.min_norm_weights)
lower_bounded_qp = tf.function(solvers.lower_bounded_qp)
cagrad_weights = tf.function(solvers.cagrad_weights)
nash_weights = tf.function(solvers.nash_weights)


def random_jacobian(rng, num_tasks, num_params, kind):
    jac = rng.normal(size=(num_tasks, num_params))
    if kind == "scaled":
        jac *= np.exp(rng.normal(size=(num_tasks, 1)))
    elif kind == "correlated":
        jac = jac + 3.0 * rng.normal(size=(1, num_params))
    return jac


def normalized(jac):
    gram = (jac @ jac.T).astype(np.float32).astype(np.float64)
    return gram / np.mean(np.diag(gram))


def quad(w, gram):
    return float(w @ gram @ w)


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize(
    "num_tasks, num_params",
    [(1, 12), (2, 780), (3, 1001), (5, 97), (7, 42), (16, 64), (40, 30)]
    + [(5, 30001), (40, 3000), (2, 0), (5, 0)],
)
def test_gramian_matches_numpy_for_every_split(num_tasks, num_params, onednn, monkeypatch):
    # Eigen's row pieces: 97 is prime (no split), 1001 = 7 * 11 * 13, 780 has
    # many divisors. oneDNN's column blocks: three for (5, 30001), the last
    # one shorter; two for (40, 3000). No parameters: a zero Gramian.
    monkeypatch.setattr(solvers, "onednn_cpu_matmuls", lambda: onednn)
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, num_params)).astype(np.float32)
    jac[0] *= 1e3
    expected = jac.astype(np.float64) @ jac.T.astype(np.float64)
    # Float32 sums of P products: off-diagonal entries that nearly cancel are
    # exact only relative to the norms |g_s| |g_t| (Cauchy-Schwarz).
    norms = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    for fn in (solvers.gramian, tf.function(solvers.gramian)):
        error = np.abs(np.asarray(fn(jac), dtype=np.float64) - expected)
        assert (error <= 1e-5 * np.abs(expected) + 1e-6 * norms).all(), error / norms


def test_gramian_cuts_rows_under_eigen_and_columns_under_onednn(monkeypatch):
    def matmul_outputs(shape, onednn):
        monkeypatch.setattr(solvers, "onednn_cpu_matmuls", lambda: onednn)
        graph = tf.function(solvers.gramian).get_concrete_function(tf.TensorSpec(shape)).graph
        return [tuple(op.outputs[0].shape) for op in graph.get_operations() if "MatMul" in op.type]

    # Eigen: the largest k with 2 k <= 16 rows that divides 780 is 6 (not 8 or 7).
    assert matmul_outputs((2, 780), onednn=False) == [(12, 12)]
    assert matmul_outputs((4, 2**16), onednn=False) == [(16, 16)]
    assert matmul_outputs((10, 2**16), onednn=False) == [(10, 10)]
    # oneDNN: one product for T <= 3, else blocks of 256 KB: 1 MB in 4.
    assert matmul_outputs((2, 2**16), onednn=True) == [(2, 2)]
    assert matmul_outputs((4, 2**16), onednn=True) == [(4, 4)] * 4
    assert solvers._column_blocks(10, 8_000_000) == 64
    assert solvers._column_blocks(3, 10**7) == 1


def test_project_onto_simplex_matches_brute_force():
    rng = np.random.default_rng(0)
    for num in (1, 2, 3, 7, 40):
        v = rng.normal(size=(5, num)) * 3.0
        p = np.asarray(solvers.project_onto_simplex(v), dtype=np.float64)
        assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
        assert (p >= 0).all()
        for row, proj in zip(v, p, strict=True):
            # Optimality: for every feasible point q, <v - p, q - p> <= 0.
            for q in np.eye(num):
                assert (row - proj) @ (q - proj) <= 1e-4


def test_project_onto_simplex_known_value():
    out = np.asarray(solvers.project_onto_simplex(np.array([0.1, 0.3, 0.9])))
    # Support {0.3, 0.9}: theta = (0.3 + 0.9 - 1) / 2 = 0.1.
    assert np.allclose(out, [0.0, 0.2, 0.8], atol=1e-6)
    out = np.asarray(solvers.project_onto_simplex(np.array([0.2, 0.3, 0.9])))
    # Full support: theta = (1.4 - 1) / 3.
    assert np.allclose(out, np.array([0.2, 0.3, 0.9]) - 0.4 / 3, atol=1e-6)


@pytest.mark.parametrize(
    "num_tasks,num_params",
    [(3, 10), (5, 50), (10, 8), (20, 200), (40, 30), (100, 200), (100, 50)],
)
def test_min_norm_matches_cvxpy(num_tasks, num_params):
    rng = np.random.default_rng(num_tasks * 1000 + num_params)
    for kind in ("plain", "scaled", "correlated"):
        gram = normalized(random_jacobian(rng, num_tasks, num_params, kind))
        w = np.asarray(min_norm(gram), dtype=np.float64)
        ref, ok = solvers.min_norm_weights_cvxpy(gram)
        assert ok
        assert w.min() >= 0 and abs(w.sum() - 1) < 1e-6
        # Never worse than cvxpy by more than 1e-5 (relative).
        assert quad(w, gram) <= quad(ref, gram) * (1 + 1e-5) + 1e-12
        # KKT: every vertex is at least as far along d as d itself.
        gw = gram @ w
        assert gw.min() >= quad(w, gram) - 1e-6 * np.max(np.diag(gram))


def test_min_norm_two_tasks_closed_form_against_grid():
    rng = np.random.default_rng(1)
    grid = np.linspace(0, 1, 100001)
    for _ in range(5):
        jac = rng.normal(size=(2, 4))
        gram = jac @ jac.T
        w = np.asarray(solvers.min_norm_weights(gram))
        values = [
            (a * a * gram[0, 0] + 2 * a * (1 - a) * gram[0, 1] + (1 - a) ** 2 * gram[1, 1])
            for a in grid
        ]
        best = grid[int(np.argmin(values))]
        assert abs(w[0] - best) < 1e-4


def test_min_norm_dense_grid_three_tasks():
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(3, 5))
    gram = jac @ jac.T
    w = np.asarray(min_norm(gram), dtype=np.float64)
    steps = np.linspace(0, 1, 401)
    best = min(
        quad(np.array([a, b, 1 - a - b]), gram)
        for a, b in itertools.product(steps, steps)
        if a + b <= 1
    )
    assert quad(w, gram) <= best + 1e-9


def test_min_norm_adversarial():
    g = np.array([1.0, 2.0, -1.0])
    cases = {
        "zero row": np.stack([g, np.zeros(3), -g]),
        "identical": np.stack([g, g, g]),
        "opposite": np.stack([g, -g, 2 * g]),
    }
    for jac in cases.values():
        gram = jac @ jac.T
        w = np.asarray(solvers.min_norm_weights(gram))
        assert np.isfinite(w).all() and abs(w.sum() - 1) < 1e-6
        assert np.linalg.norm(w @ jac) < 1e-3 * np.linalg.norm(g) or np.allclose(
            w @ jac, g, atol=1e-4
        )
    # Zero Jacobian: any point is optimal; the weights stay finite.
    assert np.isfinite(np.asarray(solvers.min_norm_weights(np.zeros((4, 4))))).all()


@pytest.mark.parametrize("num_tasks,num_params", [(3, 10), (10, 8), (20, 200), (40, 30), (100, 50)])
def test_lower_bounded_qp_matches_cvxpy_and_kkt(num_tasks, num_params):
    rng = np.random.default_rng(7 + num_tasks)
    gram = normalized(random_jacobian(rng, num_tasks, num_params, "scaled"))
    lower = np.eye(num_tasks) / num_tasks
    v = np.asarray(lower_bounded_qp(gram, lower), dtype=np.float64)
    # cvxpy for a few rows only (host solves at T = 100 take ~0.5 s each);
    # the KKT conditions are checked on every row.
    ref, _ = solvers.lower_bounded_qp_cvxpy(gram, lower[: 12 if num_tasks < 40 else 3])
    scale = np.max(np.diag(gram))
    for row, r in zip(v, ref, strict=False):
        assert quad(row, gram) <= quad(r, gram) * (1 + 1e-5) + 1e-12
    for row, u in zip(v, lower, strict=True):
        assert (row >= u - 1e-7).all()
        # KKT: G v >= 0, with equality where v > u.
        gv = gram @ row
        assert gv.min() >= -1e-7 * scale
        assert np.all(np.abs(gv[row > u + 1e-6]) <= 1e-6 * scale)


def test_cagrad_dual_matches_cvxpy():
    rng = np.random.default_rng(3)
    for num_tasks, num_params in [(2, 5), (3, 10), (5, 50), (10, 8), (20, 200), (40, 100)]:
        jac = random_jacobian(rng, num_tasks, num_params, "correlated")
        gram = normalized(jac)
        for c in (0.4, 1.0):
            w = np.asarray(cagrad_weights(gram, c), dtype=np.float64)
            ref, ok = solvers.cagrad_weights_cvxpy(gram, c)
            assert ok
            b = np.ones(num_tasks) / num_tasks
            radius = c * np.sqrt(b @ gram @ b)

            def dual(x, radius=radius, b=b, gram=gram):
                return x @ gram @ b + radius * np.sqrt(x @ gram @ x)

            assert dual(w) <= dual(ref) + 1e-5 * abs(dual(ref))


def test_nash_solver_matches_cvxpy():
    rng = np.random.default_rng(4)
    for num_tasks in (2, 3, 5, 20, 40):
        jac = random_jacobian(rng, num_tasks, 4 * num_tasks + 10, "correlated")
        gram = jac @ jac.T
        gram = gram / np.linalg.norm(gram)
        alpha, ok = nash_weights(gram)
        alpha = np.asarray(alpha, dtype=np.float64)
        assert bool(ok)
        # The bargaining condition alpha_i (G alpha)_i = 1 ...
        assert np.abs(alpha * (gram @ alpha) - 1).max() < 1e-5
        # ... and the same point as cvxpy's exact problem and the paper's sequence.
        exact, ok_exact = solvers.nash_weights_exact_cvxpy(gram)
        sequence, ok_seq = solvers.nash_weights_cvxpy(gram)
        assert ok_exact and ok_seq
        assert np.abs(alpha - exact).max() <= 1e-3 * np.abs(exact).max()
        assert np.abs(alpha - sequence).max() <= 1e-3 * np.abs(exact).max()


def test_nash_solver_reports_conflict():
    gram = np.array([[1.0, -1.0], [-1.0, 1.0]])
    _, ok = solvers.nash_weights(gram)
    assert not bool(ok)


def test_guarded_solve_singular_and_regular():
    x, ok = solvers.guarded_solve(np.array([[2.0, 0.0], [0.0, 4.0]]), np.array([[2.0], [2.0]]))
    assert bool(ok) and np.allclose(np.asarray(x)[:, 0], [1.0, 0.5])
    x, ok = solvers.guarded_solve(np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([[1.0], [1.0]]))
    assert not bool(ok) and np.isfinite(np.asarray(x)).all()


def test_solvers_in_graph_and_xla():
    rng = np.random.default_rng(5)
    gram = normalized(rng.normal(size=(6, 9))).astype(np.float32)
    lower = (np.eye(6) / 6).astype(np.float32)
    eager = (
        np.asarray(solvers.min_norm_weights(gram)),
        np.asarray(solvers.lower_bounded_qp(gram, lower)),
        np.asarray(solvers.cagrad_weights(gram, 0.4)),
        np.asarray(solvers.nash_weights(gram / np.linalg.norm(gram))[0]),
    )

    def run(g, lo):
        return (
            solvers.min_norm_weights(g),
            solvers.lower_bounded_qp(g, lo),
            solvers.cagrad_weights(g, 0.4),
            solvers.nash_weights(g / tf.norm(g))[0],
        )

    for jit in (False, True):
        out = tf.function(run, jit_compile=jit)(tf.constant(gram), tf.constant(lower))
        for a, b in zip(out, eager, strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-6)


def test_cvxpy_fallback_counts_failures():
    fallback = tf.constant([0.25, 0.75])

    def broken(g):
        raise RuntimeError("solver exploded")

    def good(g):
        return np.array([0.5, 0.5]), True

    for fn in (tf.function(lambda g: solvers.cvxpy_or_fallback(broken, fallback, g)),):
        w, failed = fn(tf.eye(2))
        assert np.allclose(w, [0.25, 0.75]) and float(failed) == 1.0
    w, failed = solvers.cvxpy_or_fallback(good, fallback, tf.eye(2))
    assert np.allclose(w, [0.5, 0.5]) and float(failed) == 0.0


def _cvxpy_qp(gram, linear, constraints):
    import cvxpy as cp

    x = cp.Variable(gram.shape[0])
    r = solvers._psd_factor(gram)
    objective = 0.5 * cp.sum_squares(r @ x) + linear @ x
    cp.Problem(cp.Minimize(objective), constraints(x)).solve(solver="CLARABEL")
    return x.value


@pytest.mark.parametrize("num_tasks", [3, 10, 30])
def test_simplex_and_box_qp_match_cvxpy(num_tasks):
    rng = np.random.default_rng(20 + num_tasks)
    gram = normalized(random_jacobian(rng, num_tasks, 2 * num_tasks, "plain"))
    linear = rng.normal(size=num_tasks)

    def value(x):
        return 0.5 * x @ gram @ x + linear @ x

    w = np.asarray(tf.function(solvers.simplex_qp)(gram, linear), dtype=np.float64)
    ref = _cvxpy_qp(gram, linear, lambda x: [x >= 0, x.sum() == 1])
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-6
    assert value(w) <= value(ref) + 1e-5 * abs(value(ref)) + 1e-9
    lower, upper = -np.ones(num_tasks), 0.5 * np.ones(num_tasks)
    x = np.asarray(tf.function(solvers.box_qp)(gram, linear, lower, upper), dtype=np.float64)
    ref = _cvxpy_qp(gram, linear, lambda v: [v >= lower, v <= upper])
    assert (x >= lower - 1e-7).all() and (x <= upper + 1e-7).all()
    assert value(x) <= value(ref) + 1e-5 * abs(value(ref)) + 1e-9


def test_min_norm_two_identical_gradients_split_evenly():
    # Every convex combination of two identical gradients is the min-norm
    # point; the solver picks the symmetric one, [0.5, 0.5], so that swapping
    # the tasks swaps nothing (a 0/0 must not fall to one end of the segment).
    gram = np.full((2, 2), 14.0)  # g1 = g2 = [1, 2, 3]
    np.testing.assert_allclose(np.asarray(solvers.min_norm_weights(gram)), [0.5, 0.5])
    np.testing.assert_allclose(np.asarray(solvers.min_norm_weights(np.zeros((2, 2)))), [0.5, 0.5])


def test_row_norms_of_tiny_rows():
    # (3e-30)^2 underflows float32 to 0: the plain sqrt(sum(x^2)) would give
    # 0; the scaled path gives 5e-30 (the norm Nash-MTL uses for |G|_F).
    out = np.asarray(solvers.row_norms(np.array([[3e-30, 4e-30], [3e-20, 4e-20]], "float32")))
    np.testing.assert_allclose(out, [5e-30, 5e-20], rtol=1e-6)
