"""The synthetic two-task regression data of the MMoE paper (Ma et al., KDD 2018, Sec. 4.1)."""

from __future__ import annotations

import numpy as np

from keras_mtl._validation import (
    check_integer,
    check_number,
    check_numpy_seed,
    check_positive_int,
    invalid_value,
)

TASKS = ("task_1", "task_2")


def generate(
    num_samples: int,
    correlation: float = 0.5,
    input_dim: int = 100,
    scale: float = 1.0,
    num_sin: int = 10,
    param_std: float = 0.1,
    noise_std: float = 0.1,
    seed: int = 0,
    sinusoids: str = "random",
):
    """Generates `num_samples` examples of two tasks with a chosen correlation.

    Following Sec. 4.1 of the MMoE paper: two orthogonal unit vectors u1, u2;
    weights w1 = c u1 and w2 = c (p u1 + sqrt(1 - p^2) u2); x ~ N(0, I_d);
    y_t = w_t^T x + sum_{i=1}^m sin(alpha_i w_t^T x + beta_i) + eps_t with the
    same alpha_i, beta_i for both tasks. The paper calls alpha_i, beta_i
    "given parameters" and draws the noise from N(0, 0.01). By default we
    draw alpha_i, beta_i from N(0, 0.01) too and read 0.01 as a variance
    (standard deviation 0.1): the tasks are then nearly linear and easy to
    learn. `param_std=1.0`, as public reimplementations use, makes the sines
    matter: the label correlation then falls well below `correlation` and the
    architectures differ (`benchmarks/mmoe_synthetic.py --sinusoids random
    --param-std 1.0`; the script's default is `sinusoids="index"`).
    The cosine of w1 and w2 is exactly `correlation`; the label correlation
    is lower because of the sines.

    Args:
        num_samples: number of examples, a positive integer.
        correlation: the task correlation p in [-1, 1].
        input_dim: input dimension d.
        scale: the scale constant c, a finite float.
        num_sin: number m of sinusoids.
        param_std: standard deviation of alpha_i and beta_i (default 0.1),
            finite and >= 0.
        noise_std: standard deviation of the label noise (default 0.1),
            finite and >= 0.
        seed: seed of the generator, a non-negative integer; equal seeds
            give equal data.
        sinusoids: `"random"` draws alpha_i, beta_i from N(0, param_std^2);
            `"index"` fixes alpha_i = i and beta_i = i^2 (i = 1..m), the
            values of the public generator released with the paper's
            experiment, which make the labels strongly non-linear.

    Returns:
        `(x, {"task_1": y1, "task_2": y2})` with `x` of shape
        `(num_samples, input_dim)` and labels of shape `(num_samples, 1)`,
        all float32.

    Raises:
        ValueError: for arguments out of range.

    Example:

    >>> from keras_mtl.datasets import synthetic
    >>> x, y = synthetic.generate(4, correlation=0.9, input_dim=5)
    >>> x.shape, y["task_1"].shape, y["task_2"].shape
    ((4, 5), (4, 1), (4, 1))

    References:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with
        Multi-gate Mixture-of-Experts", KDD 2018.
    """
    num_samples = check_positive_int("num_samples", num_samples)
    p = check_number("correlation", correlation, "a float in [-1, 1]", lambda v: not -1 <= v <= 1)
    input_dim = check_integer("input_dim", input_dim, "an integer >= 2", lambda v: v < 2)
    num_sin = check_integer("num_sin", num_sin, "a non-negative integer", lambda v: v < 0)
    # A NaN or infinity here would give all-NaN labels without an error.
    scale = check_number("scale", scale, "a finite float")
    param_std = check_number("param_std", param_std, "a finite float >= 0", lambda v: v < 0)
    noise_std = check_number("noise_std", noise_std, "a finite float >= 0", lambda v: v < 0)
    seed = check_numpy_seed(seed)
    rng = np.random.default_rng(seed)
    # Two orthonormal directions from the QR decomposition of a Gaussian matrix.
    q, _ = np.linalg.qr(rng.standard_normal((input_dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    w1 = scale * u1
    w2 = scale * (p * u1 + np.sqrt(max(0.0, 1.0 - p * p)) * u2)
    if sinusoids not in ("random", "index"):
        raise invalid_value("sinusoids", sinusoids, "'random' or 'index'")
    if sinusoids == "index":
        alpha = np.arange(1.0, num_sin + 1.0)
        beta = alpha**2
    else:
        alpha = rng.normal(0.0, param_std, size=num_sin)
        beta = rng.normal(0.0, param_std, size=num_sin)
    x = rng.standard_normal((num_samples, input_dim))
    labels = {}
    for name, w in zip(TASKS, (w1, w2), strict=True):
        z = x @ w
        y = z + np.sin(np.outer(z, alpha) + beta).sum(axis=1)
        y = y + rng.normal(0.0, noise_std, size=num_samples)
        labels[name] = y.astype("float32")[:, None]
    return x.astype("float32"), labels


def load_data(
    num_train: int = 10000,
    num_test: int = 2000,
    correlation: float = 0.5,
    input_dim: int = 100,
    seed: int = 0,
    data_dir=None,
    **kwargs,
):
    """Train and test splits of the MMoE synthetic data (see `generate`).

    The data are generated, not read: `data_dir` is accepted for the common
    loader signature and ignored.

    Args:
        num_train: number of training examples.
        num_test: number of test examples.
        correlation: task correlation p in [-1, 1].
        input_dim: input dimension d (the paper uses 100).
        seed: seed, a non-negative integer; the same seed gives the same
            splits.
        data_dir: ignored.
        **kwargs: further arguments of `generate` (`scale`, `num_sin`,
            `param_std`, `noise_std`).

    Returns:
        `(x_train, y_train), (x_test, y_test)` with `y_*` dicts keyed by
        `"task_1"` and `"task_2"`.

    Raises:
        ValueError: for arguments out of range (see `generate`).

    Example:

    >>> from keras_mtl.datasets import synthetic
    >>> (x, y), (xt, yt) = synthetic.load_data(num_train=8, num_test=2, input_dim=3)
    >>> x.shape, xt.shape, sorted(y)
    ((8, 3), (2, 3), ['task_1', 'task_2'])
    """
    del data_dir
    num_train = check_positive_int("num_train", num_train)
    num_test = check_positive_int("num_test", num_test)
    x, y = generate(
        num_train + num_test, correlation=correlation, input_dim=input_dim, seed=seed, **kwargs
    )
    train = (x[:num_train], {k: v[:num_train] for k, v in y.items()})
    test = (x[num_train:], {k: v[num_train:] for k, v in y.items()})
    return train, test
