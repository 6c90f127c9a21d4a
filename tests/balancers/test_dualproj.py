import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import DualProj
from tests.balancers import gradient_checks as checks
from tests.balancers.test_upgrad import project_onto_dual_cone


def test_reference_jacobian_by_hand():
    # mean = [1, 1, 1] conflicts with g1 = [-4, 1, 1] (<.,.> = -2): projected
    # onto {<x, g1> >= 0}: mean + 2/18 g1, which is also >= 0 against g2.
    d, _ = checks.run(DualProj(reg_eps=0.0), checks.REFERENCE_J)
    g1 = checks.REFERENCE_J[0]
    np.testing.assert_allclose(d, np.ones(3) + 2 / 18 * g1, rtol=1e-5)


@pytest.mark.parametrize("num_tasks", [2, 4, 7])
def test_matches_projection_in_parameter_space(num_tasks):
    rng = np.random.default_rng(num_tasks)
    jac = rng.normal(size=(num_tasks, 10))
    d, _ = checks.run(DualProj(reg_eps=0.0), jac)
    expected = project_onto_dual_cone(jac, jac.mean(axis=0))
    np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_properties():
    # The ridge (reg_eps) relaxes the guarantee by O(reg_eps); exact without it.
    checks.check_non_conflicting(DualProj, tol=1e-3)
    checks.check_non_conflicting(lambda: DualProj(reg_eps=0.0), tol=1e-5)
    checks.check_permutation_equivariance(DualProj)
    checks.check_finite(DualProj)
    checks.check_graph_and_jit(DualProj, num_tasks=(2, 4))


def test_config_and_validation():
    checks.check_config_round_trip(DualProj(reg_eps=1e-3), DualProj)
    assert isinstance(balancers.get("dualproj"), DualProj)
    with pytest.raises(ValueError, match="reg_eps"):
        DualProj(reg_eps=float("nan"))


def test_ridge_is_added_to_the_trace_normalised_gramian():
    # G = [[18, -22], [-22, 38]], trace 56. Minimising v^T (G / 56 + eps I) v
    # over v >= 1/2 keeps v2 = 1/2 and gives v1 = 11 / (18 + 56 eps).
    for reg_eps in (0.05, 1e-4):  # 1e-4: torchjd's default
        b = DualProj(reg_eps=reg_eps)
        d, w = checks.run(b, checks.REFERENCE_J)
        np.testing.assert_allclose(w, [11 / (18 + 56 * reg_eps), 0.5], rtol=2e-6)
        np.testing.assert_allclose(d, w @ checks.REFERENCE_J, rtol=1e-5)
    assert DualProj().reg_eps == 1e-4
