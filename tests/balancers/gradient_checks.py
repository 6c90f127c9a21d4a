"""Checks shared by the tests of the gradient balancers (issue 5)."""

import keras
import numpy as np
import tensorflow as tf

from keras_mtl import balancers

REFERENCE_J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def run(balancer, jac, losses=None, graph=False, jit=False, representation=None):
    jac = np.asarray(jac, dtype=np.float32)
    losses = np.ones(jac.shape[0], np.float32) if losses is None else np.asarray(losses, np.float32)
    if not graph:
        r = balancer.aggregate(jac, losses, representation=representation)
    else:
        if not balancer.built:
            balancer.build(jac.shape[0])
        fn = tf.function(
            lambda j, loss: tuple(balancer.aggregate(j, loss, representation=representation)),
            jit_compile=jit,
        )
        r = fn(tf.constant(jac), tf.constant(losses))
    return np.asarray(r[0], dtype=np.float64), np.asarray(r[1], dtype=np.float64)


def adversarial_jacobians(rng):
    g = rng.normal(size=7)
    h = rng.normal(size=7)
    cases = {
        "zero_row": np.stack([g, np.zeros(7), h]),
        "all_zero": np.zeros((3, 7)),
        "identical": np.stack([g, g, g]),
        "opposite": np.stack([g, -g]),
        "opposite3": np.stack([g, -g, h]),
        "one_task": g[None],
        "forty_tasks": rng.normal(size=(40, 30)),
        "wide_forty": rng.normal(size=(40, 200)),
    }
    for scale in (1e-10, 1e-5, 1e5, 1e15):
        cases[f"scale_{scale:g}"] = scale * rng.normal(size=(3, 7))
    return cases


def check_finite(make, rng=None, graph=False):
    """Finite direction and weights on adversarial Jacobians (also zero losses)."""
    rng = np.random.default_rng(0) if rng is None else rng
    for name, jac in adversarial_jacobians(rng).items():
        for losses in (np.ones(jac.shape[0]), np.zeros(jac.shape[0])):
            d, w = run(make(), jac, losses, graph=graph)
            assert d.shape == (jac.shape[1],) and w.shape == (jac.shape[0],), name
            assert np.isfinite(d).all() and np.isfinite(w).all(), (name, d, w)


def check_non_conflicting(make, num_tasks_list=(2, 3, 5, 10), trials=5, tol=1e-4):
    rng = np.random.default_rng(1)
    for num_tasks in num_tasks_list:
        for _ in range(trials):
            jac = rng.normal(size=(num_tasks, 12)) + rng.normal(size=(1, 12)) * 0.3
            d, _ = run(make(), jac)
            products = jac @ d
            assert products.min() >= -tol * np.linalg.norm(jac) * np.linalg.norm(d), products


def check_permutation_equivariance(make, num_tasks=5, tol=1e-4):
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(num_tasks, 9)) + 0.5 * rng.normal(size=(1, 9))
    losses = rng.uniform(0.5, 2.0, size=num_tasks)
    perm = rng.permutation(num_tasks)
    d, w = run(make(), jac, losses)
    dp, wp = run(make(), jac[perm], losses[perm])
    np.testing.assert_allclose(dp, d, rtol=tol, atol=tol * np.abs(d).max())
    np.testing.assert_allclose(wp, w[perm], rtol=tol, atol=tol * np.abs(w).max())


def check_graph_and_jit(make, num_tasks=(2, 3), losses=None, jit=True, rtol=1e-4):
    """Eager, tf.function and XLA agree (fresh balancer each: same seed/state)."""
    rng = np.random.default_rng(3)
    for t in num_tasks:
        jac = rng.normal(size=(t, 11))
        loss = rng.uniform(0.5, 2.0, size=t) if losses is None else losses[:t]
        eager = run(make(), jac, loss)
        modes = [(True, False)] + ([(True, True)] if jit else [])
        for graph, xla in modes:
            out = run(make(), jac, loss, graph=graph, jit=xla)
            for a, b in zip(out, eager, strict=True):
                np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(np.abs(b).max(), 1e-6))


def check_config_round_trip(balancer, expected_class):
    config = balancers.serialize(balancer)
    restored = balancers.deserialize(config)
    assert type(restored) is expected_class
    assert restored.get_config() == balancer.get_config()
    return restored


def check_state_restores(make, steps=3, num_tasks=3, num_params=8):
    """Saving the variables after some steps and loading them into a fresh
    balancer reproduces the following steps exactly."""
    rng = np.random.default_rng(4)
    jacs = [rng.normal(size=(num_tasks, num_params)) for _ in range(2 * steps)]
    losses = [rng.uniform(0.2, 2.0, size=num_tasks) for _ in range(2 * steps)]
    first = make()
    for j, loss in zip(jacs[:steps], losses[:steps], strict=True):
        run(first, j, loss)
    saved = [np.array(v) for v in first.variables]
    expected = [run(first, j, loss) for j, loss in zip(jacs[steps:], losses[steps:], strict=True)]
    second = make()
    run(second, jacs[0], losses[0])  # build (and create lazy state)
    assert len(second.variables) == len(saved)
    for v, value in zip(second.variables, saved, strict=True):
        v.assign(value)
    got = [run(second, j, loss) for j, loss in zip(jacs[steps:], losses[steps:], strict=True)]
    for (d1, w1), (d2, w2) in zip(expected, got, strict=True):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(w1, w2)


def seeded_uniform(seed, shape):
    """The first draw of a fresh `SeedGenerator(seed)` (what a balancer built
    with that seed draws first)."""
    return np.asarray(keras.random.uniform(shape, seed=keras.random.SeedGenerator(seed)))
