import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import RLW


def _draws(balancer, steps, tasks=3):
    return np.array([balancer.aggregate(None, np.ones(tasks)).weights for _ in range(steps)])


def test_same_seed_same_sequence_different_seed_differs():
    a, b, c = _draws(RLW(seed=7), 5), _draws(RLW(seed=7), 5), _draws(RLW(seed=8), 5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[0], a[1])  # fresh weights each step
    np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-6)


def test_normal_default_is_softmax_of_standard_normal_draws():
    generator = keras.random.SeedGenerator(3)
    expected = [
        np.asarray(keras.ops.softmax(keras.random.normal((4,), seed=generator))) for _ in range(3)
    ]
    np.testing.assert_allclose(_draws(RLW(seed=3), 3, tasks=4), expected, rtol=1e-6)


def test_dirichlet_is_normalised_gamma_draws():
    # Dirichlet(a) = Gamma(a) draws divided by their sum (not a softmax of them).
    generator = keras.random.SeedGenerator(4)
    draws = [np.asarray(keras.random.gamma((3,), alpha=0.5, seed=generator)) for _ in range(3)]
    expected = [g / g.sum() for g in draws]
    got = _draws(RLW(distribution="dirichlet", concentration=0.5, seed=4), 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_reproducible_inside_tf_function_and_after_state_restore():
    eager = _draws(RLW(seed=5), 6)
    b = RLW(seed=5)
    b.build(3)
    step = tf.function(lambda losses: b.aggregate(None, losses).weights)
    graph = [step(tf.ones(3)).numpy() for _ in range(3)]
    np.testing.assert_allclose(graph, eager[:3], rtol=1e-6)
    copy = balancers.deserialize(balancers.serialize(b))
    if not copy.built:
        copy.build(3)
    for v, w in zip(copy.variables, b.variables, strict=True):
        v.assign(w)
    np.testing.assert_allclose(_draws(copy, 3), eager[3:], rtol=1e-6)


@pytest.mark.parametrize("distribution", ["uniform", "dirichlet"])
def test_other_distributions_are_on_the_simplex(distribution):
    w = _draws(RLW(distribution=distribution, seed=0), 200)
    assert np.all(w > 0) and np.allclose(w.sum(1), 1.0, atol=1e-5)
    if distribution == "uniform":
        # softmax of U(0, 1)^3: each weight lies in (e^0 / (e^0 + 2e^1), e^1 / (e^1 + 2e^0)).
        assert w.min() > 1 / (1 + 2 * np.e) and w.max() < np.e / (np.e + 2)
    else:
        # Dirichlet(1, 1, 1): each weight has mean 1/3 and variance 1/18.
        np.testing.assert_allclose(w.mean(0), 1 / 3, atol=0.06)
        np.testing.assert_allclose(w.var(0), 1 / 18, atol=0.02)


def test_config_and_validation():
    b = RLW(distribution="dirichlet", concentration=0.5, seed=1)
    again = balancers.get(balancers.serialize(b))
    assert isinstance(again, RLW) and again.get_config() == b.get_config()
    with pytest.raises(ValueError, match="Received: distribution='beta'"):
        RLW(distribution="beta")
    with pytest.raises(ValueError, match="Received: concentration=0"):
        RLW(concentration=0)
    with pytest.raises(ValueError, match="Received: seed=1.5"):
        RLW(seed=1.5)
