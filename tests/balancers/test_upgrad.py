import cvxpy as cp
import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import UPGrad
from tests.balancers import gradient_checks as checks


def project_onto_dual_cone(jac, vector):
    """Euclidean projection in parameter space: min |x - v| s.t. J x >= 0."""
    x = cp.Variable(jac.shape[1])
    cp.Problem(cp.Minimize(cp.sum_squares(x - vector)), [jac @ x >= 0]).solve(solver="CLARABEL")
    return x.value


def test_reference_value():
    d, _ = checks.run(UPGrad(), checks.REFERENCE_J)
    np.testing.assert_allclose(d, [0.2929, 1.9004, 1.9004], atol=1e-4)
    # Without the ridge: the exact projections, derived by hand:
    # mean(g1 + 22/38 g2, g2 + 22/18 g1).
    d, _ = checks.run(UPGrad(reg_eps=0.0), checks.REFERENCE_J)
    g1, g2 = checks.REFERENCE_J
    np.testing.assert_allclose(d, 0.5 * (g1 + 22 / 38 * g2 + g2 + 22 / 18 * g1), rtol=1e-5)


@pytest.mark.parametrize("num_tasks", [3, 5, 8])
def test_matches_projections_in_parameter_space(num_tasks):
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, 12)) + 0.3 * rng.normal(size=(1, 12))
    d, w = checks.run(UPGrad(reg_eps=0.0), jac)
    expected = np.mean([project_onto_dual_cone(jac, g) for g in jac], axis=0)
    np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(d, w @ jac, rtol=1e-4, atol=1e-5)


def test_properties():
    # The ridge (reg_eps) relaxes the guarantee by O(reg_eps); exact without it.
    checks.check_non_conflicting(UPGrad, tol=1e-3)
    checks.check_non_conflicting(lambda: UPGrad(reg_eps=0.0), tol=1e-5)
    checks.check_permutation_equivariance(UPGrad)
    checks.check_finite(UPGrad)
    checks.check_graph_and_jit(UPGrad, num_tasks=(2, 4))


def test_config_and_validation():
    checks.check_config_round_trip(UPGrad(reg_eps=0.0), UPGrad)
    assert isinstance(balancers.get("upgrad"), UPGrad)
    with pytest.raises(ValueError, match="reg_eps"):
        UPGrad(reg_eps=-1.0)


def test_non_conflicting_with_more_tasks_than_parameters():
    rng = np.random.default_rng(11)
    for _ in range(3):
        jac = rng.normal(size=(40, 12)) + 0.5 * rng.normal(size=(1, 12))
        d, _ = checks.run(UPGrad(reg_eps=0.0), jac)
        assert (jac @ d).min() >= -1e-5 * np.linalg.norm(jac) * np.linalg.norm(d)
