import keras
import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import GradVac, PCGrad
from keras_mtl.balancers.pcgrad import random_orders
from tests.balancers import gradient_checks as checks


def gradvac_numpy(jac, orders, targets, beta):
    """GradVac (Wang et al. 2021, Algorithm 1) on full vectors."""
    targets = targets.copy()
    out = []
    for i, order in enumerate(orders):
        g = jac[i].copy()
        for j in order:
            if j == i:
                continue
            phi = g @ jac[j] / (np.linalg.norm(g) * np.linalg.norm(jac[j]))
            t = targets[i, j]
            if phi < t:
                g = (
                    g
                    + np.linalg.norm(g)
                    * (t * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - t**2))
                    / (np.linalg.norm(jac[j]) * np.sqrt(1 - t**2))
                    * jac[j]
                )
            targets[i, j] = (1 - beta) * t + beta * phi
        out.append(g)
    return np.sum(out, axis=0), targets


def test_first_step_is_pcgrad():
    d, _ = checks.run(GradVac(seed=0), checks.REFERENCE_J)
    np.testing.assert_allclose(d, [0.5848, 3.8012, 3.8012], atol=1e-4)
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(4, 10))
    d1, _ = checks.run(GradVac(seed=2), jac)
    d2, _ = checks.run(PCGrad(seed=2), jac)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-6)


def test_several_steps_match_numpy():
    rng = np.random.default_rng(1)
    num_tasks, beta = 3, 0.5
    b = GradVac(beta=beta, seed=5)
    generator = keras.random.SeedGenerator(5)
    targets = np.zeros((num_tasks, num_tasks))
    for _ in range(4):
        jac = rng.normal(size=(num_tasks, 8)) + rng.normal(size=(1, 8))
        orders = np.asarray(random_orders(num_tasks, generator))
        expected, targets = gradvac_numpy(jac, orders, targets, beta)
        d, _ = checks.run(b, jac)
        np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(b.targets), targets, atol=1e-5)


def test_properties():
    checks.check_finite(lambda: GradVac(seed=0))
    checks.check_graph_and_jit(lambda: GradVac(seed=1), num_tasks=(2, 3), jit=False)
    checks.check_graph_and_jit(lambda: GradVac(seed=1), num_tasks=(2,), jit=True)
    checks.check_state_restores(lambda: GradVac(beta=0.3, seed=4))


def test_config_and_validation():
    checks.check_config_round_trip(GradVac(beta=0.2, seed=3), GradVac)
    assert isinstance(balancers.get("gradvac"), GradVac)
    assert GradVac().beta == 0.01  # the paper's EMA rate
    for beta in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            GradVac(beta=beta)


def test_a_zero_gradient_leaves_its_pair_targets_unchanged():
    # Step 1: cos(g1, g2) = 1/sqrt(2) >= the 0 targets, so no change; the
    # targets move to 0.5 / sqrt(2). Step 2: g1 = 0 has no cosine with g2, so
    # neither target of the pair moves (instead of decaying towards 0).
    b = GradVac(beta=0.5, seed=0)
    checks.run(b, [[1.0, 0.0], [1.0, 1.0]])
    expected = 0.5 / np.sqrt(2) * (1 - np.eye(2))
    np.testing.assert_allclose(np.asarray(b.targets), expected, rtol=1e-6)
    d, _ = checks.run(b, [[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(d, [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(b.targets), expected, rtol=1e-6)
