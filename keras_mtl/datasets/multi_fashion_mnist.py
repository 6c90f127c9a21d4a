"""Multi-(Fashion+MNIST): an MNIST digit top-left, a Fashion-MNIST item bottom-right."""

from __future__ import annotations

from keras_mtl.datasets import multi_mnist

TASKS = multi_mnist.TASKS


def load_data(data_dir=None, **kwargs):
    """Multi-(Fashion+MNIST); `multi_mnist.load_data(data_dir, variant="fashion_mnist", **kwargs)`.

    Task `"left"` classifies the digit, task `"right"` the Fashion item.

    Args:
        data_dir: folder holding `mnist/mnist.npz` and the `fashion_mnist/`
            IDX files; defaults to `$KERAS_MTL_DATA_DIR`, then the download
            cache.
        **kwargs: other arguments of `keras_mtl.datasets.multi_mnist.load_data`.

    Returns:
        `(x_train, y_train), (x_test, y_test)` as `multi_mnist.load_data`.

    Raises:
        ValueError: for an invalid argument (a `seed` that is not a
            non-negative integer, ...) or a corrupt file, as
            `multi_mnist.load_data`.
        FileNotFoundError: when `data_dir` does not exist or the files are
            missing.

    Example:

    >>> from keras_mtl.datasets import multi_fashion_mnist
    >>> multi_fashion_mnist.TASKS
    ('left', 'right')

    References:
        Lin et al., "Pareto Multi-Task Learning", NeurIPS 2019.
    """
    return multi_mnist.load_data(data_dir, variant="fashion_mnist", **kwargs)
