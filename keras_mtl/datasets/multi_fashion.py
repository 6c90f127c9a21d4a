"""MultiFashion: two overlaid Fashion-MNIST items, tasks "left" and "right"."""

from __future__ import annotations

from keras_mtl.datasets import multi_mnist

TASKS = multi_mnist.TASKS


def load_data(data_dir=None, **kwargs):
    """MultiFashion; `multi_mnist.load_data(data_dir, variant="fashion", **kwargs)`.

    Args:
        data_dir: folder holding the `fashion_mnist/` IDX files; defaults to
            `$KERAS_MTL_DATA_DIR`, then the download cache.
        **kwargs: other arguments of `keras_mtl.datasets.multi_mnist.load_data`
            (`seed`, `right_offset`, `normalize`, `as_dataset`, ...).

    Returns:
        `(x_train, y_train), (x_test, y_test)` as `multi_mnist.load_data`.

    Raises:
        ValueError: for an invalid argument (a `seed` that is not a
            non-negative integer, ...) or a corrupt file, as
            `multi_mnist.load_data`.
        FileNotFoundError: when `data_dir` does not exist or the files are
            missing.

    Example:

    >>> from keras_mtl.datasets import multi_fashion
    >>> multi_fashion.TASKS
    ('left', 'right')
    """
    return multi_mnist.load_data(data_dir, variant="fashion", **kwargs)
