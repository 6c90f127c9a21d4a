import numpy as np
import pytest

from keras_mtl import balancers
from keras_mtl.balancers import DBMTL
from tests.balancers import gradient_checks as checks


def db_mtl_numpy(jacs, losses, beta, sigma, eps=1e-8):
    """DB-MTL Algorithm 1 (as LibMTL): EMA of log-loss gradients, rescaled."""
    buffer = np.zeros_like(jacs[0])
    out = []
    for k, (jac, loss) in enumerate(zip(jacs, losses, strict=True), start=1):
        grads = jac / (loss + eps)[:, None]
        buffer = grads + beta / k**sigma * (buffer - grads)
        norms = np.linalg.norm(buffer, axis=1)
        out.append((norms.max() / (norms + 1e-8)) @ buffer)
    return out


@pytest.mark.parametrize("beta,sigma", [(0.9, 0.0), (0.5, 0.5)])
def test_matches_algorithm(beta, sigma):
    rng = np.random.default_rng(0)
    jacs = [rng.normal(size=(3, 7)) * [[1.0], [10.0], [0.1]] for _ in range(5)]
    losses = [rng.uniform(0.1, 3.0, size=3) for _ in range(5)]
    b = DBMTL(beta=beta, sigma=sigma)
    expected = db_mtl_numpy(jacs, losses, beta, sigma)
    for jac, loss, e in zip(jacs, losses, expected, strict=True):
        d, w = checks.run(b, jac, loss)
        np.testing.assert_allclose(d, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())
        np.testing.assert_allclose(w, 1 / (loss + 1e-8), rtol=1e-6)
    assert float(b.step) == 5.0 and b.num_params == 7


def test_eps_is_added_to_the_loss():
    # g_t = grad log(L_t + eps) = grad L_t / (L_t + eps): with eps = 0.5 the
    # weights are 1 / (L + 0.5), not 1 / max(L, eps) (equal for eps = 1e-8).
    jac = np.array([[2.0, 0.0], [0.0, 1.0]])
    loss = np.array([1.0, 0.5])
    d, w = checks.run(DBMTL(eps=0.5), jac, loss)
    np.testing.assert_allclose(w, [2.0 / 3.0, 1.0], rtol=1e-6)
    # Moving averages 0.1 * [4/3, 0] and 0.1 * [0, 1]: both rescaled to
    # norm 0.1 * 4/3 and summed.
    np.testing.assert_allclose(d, [0.4 / 3.0, 0.4 / 3.0], rtol=1e-5)
    np.testing.assert_allclose(d, db_mtl_numpy([jac], [loss], 0.9, 0.0, eps=0.5)[0], rtol=1e-5)


def test_representation_variant_balances_current_gradients():
    rng = np.random.default_rng(1)
    jac = rng.normal(size=(2, 6)) * [[1.0], [5.0]]
    loss = np.array([1.0, 2.0])
    d, _ = checks.run(DBMTL(beta=0.0), jac, loss, representation=np.zeros((2, 3)))
    grads = jac / loss[:, None]
    norms = np.linalg.norm(grads, axis=1)
    np.testing.assert_allclose(d, (norms.max() / norms) @ grads, rtol=1e-5)


def test_representation_variant_averages_the_norms_over_steps():
    # n <- b n + (1 - b) |J_t / (L_t + eps)| (n starts at 0), then
    # d = sum_t (max_s n_s / n_t) g_t with the current log-loss gradients.
    rng = np.random.default_rng(2)
    beta = 0.6
    b = DBMTL(beta=beta)
    moving = np.zeros(2)
    for _ in range(3):
        jac = rng.normal(size=(2, 6)) * rng.uniform(0.2, 5.0, size=(2, 1))
        loss = rng.uniform(0.5, 2.0, size=2)
        d, _ = checks.run(b, jac, loss, representation=np.zeros((2, 3)))
        grads = jac / loss[:, None]
        moving = beta * moving + (1 - beta) * np.linalg.norm(grads, axis=1)
        expected = (moving.max() / moving) @ grads
        np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(b.moving_norms), moving, rtol=1e-5)


def test_jacobian_width_must_not_change():
    b = DBMTL()
    checks.run(b, np.ones((2, 4)))
    with pytest.raises(ValueError, match="4 parameters"):
        checks.run(b, np.ones((2, 5)))


def test_properties():
    checks.check_permutation_equivariance(DBMTL)
    checks.check_finite(DBMTL)
    checks.check_graph_and_jit(DBMTL, num_tasks=(2, 4))
    checks.check_state_restores(lambda: DBMTL(sigma=0.5))


def test_config_and_validation():
    b = DBMTL(beta=0.8, sigma=0.1)
    checks.run(b, np.ones((2, 3)))
    restored = checks.check_config_round_trip(b, DBMTL)
    assert restored.num_params == 3
    restored.build(2)
    assert tuple(restored.moving_gradients.shape) == (2, 3)
    assert isinstance(balancers.get("db_mtl"), DBMTL)
    # LibMTL's DB-MTL defaults: beta 0.9, sigma 0 (constant rate), eps 1e-8.
    assert (DBMTL().beta, DBMTL().sigma, DBMTL().eps) == (0.9, 0.0, 1e-8)
    for kwargs in ({"beta": 1.0}, {"sigma": -1.0}, {"eps": -1.0}, {"num_params": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            DBMTL(**kwargs)
