import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import AlignedMTL
from tests.balancers import gradient_checks as checks


def aligned_numpy(jac, mode):
    """The official Procrustes solver, transcribed with NumPy's eigh."""
    gram = jac @ jac.T
    values, vectors = np.linalg.eigh(gram)
    tol = values.max() * len(values) * np.finfo(np.float32).eps
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    rank = int((values > tol).sum())
    values, vectors = values[:rank], vectors[:, :rank]
    scale = {
        "min": values[-1],
        "median": np.sort(values)[(rank - 1) // 2],
        "rmse": values.mean(),
    }[mode]
    weights = (vectors * np.sqrt(scale / values)) @ vectors.T
    return weights.sum(axis=1) @ jac, weights.sum(axis=1)


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("num_tasks,num_params", [(2, 5), (4, 10), (6, 4)])
def test_matches_numpy(mode, num_tasks, num_params):
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, num_params)) * rng.uniform(0.5, 3, size=(num_tasks, 1))
    d, w = checks.run(AlignedMTL(scale_mode=mode), jac)
    d_ref, w_ref = aligned_numpy(jac, mode)
    np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-5)


def test_aligned_gradients_are_orthogonal_with_equal_norms():
    rng = np.random.default_rng(3)
    jac = rng.normal(size=(3, 7))
    b = AlignedMTL()
    b.build(3)
    # Weight matrix W (T x T): its column sums are the weights; rebuild it
    # from the directions of each basis problem via linearity in J.
    d, _ = checks.run(b, jac)
    gram = jac @ jac.T
    values, vectors = np.linalg.eigh(gram)
    weights = (vectors * np.sqrt(values.min() / values)) @ vectors.T
    aligned = weights.T @ jac
    np.testing.assert_allclose(
        aligned @ aligned.T, values.min() * np.eye(3), atol=1e-8 * values.max()
    )
    np.testing.assert_allclose(d, aligned.sum(axis=0), rtol=1e-4, atol=1e-5)


def test_properties():
    checks.check_permutation_equivariance(AlignedMTL)
    checks.check_finite(AlignedMTL)
    checks.check_graph_and_jit(AlignedMTL, num_tasks=(2, 4))


def test_config_and_validation():
    checks.check_config_round_trip(AlignedMTL(scale_mode="rmse"), AlignedMTL)
    assert isinstance(balancers.get("aligned_mtl"), AlignedMTL)
    with pytest.raises(ValueError, match="scale_mode"):
        AlignedMTL(scale_mode="max")


def test_rank_tolerance_is_num_tasks_times_eps_of_the_largest_eigenvalue():
    # Orthogonal gradients of norms 3, 2, 1 and 3 sqrt(3e-7): eigenvalues
    # 9, 4, 1 and 2.7e-6 = 3e-7 * 9, below the official tolerance
    # max(l) * T * eps_float32 = 4.8e-7 * 9 (but above max(l) * eps). The
    # tiny component is dropped, and every kept aligned gradient is rescaled
    # to the smallest kept norm 1: weights [1/3, 1/2, 1, 0], direction [1, 1, 1, 0].
    jac = np.diag([3.0, 2.0, 1.0, 3.0 * np.sqrt(3e-7)])
    d, w = checks.run(AlignedMTL(), jac)
    np.testing.assert_allclose(w, [1 / 3, 1 / 2, 1.0, 0.0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d, [1.0, 1.0, 1.0, 0.0], rtol=1e-5, atol=1e-7)
