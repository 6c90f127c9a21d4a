"""AliExpress (search click and conversion) sample tables, for ESMM / MMoE / PLE smoke tests."""

from __future__ import annotations

import os

from keras_mtl.datasets import rec_samples
from keras_mtl.datasets.data_files import DataFile

TASKS = ("click", "conversion")
_ORIGIN = (
    "https://raw.githubusercontent.com/datawhalechina/torch-rechub/main/examples/ranking/data/"
    "aliexpress/"
)
FILES = (
    DataFile(
        "aliexpress_train_sample.csv",
        _ORIGIN + "aliexpress_train_sample.csv",
        "9a602d2bd6012b23898437f60977135b65e75c3414bf19cac0d70408b12035ef",
    ),
    DataFile(
        "aliexpress_test_sample.csv",
        _ORIGIN + "aliexpress_test_sample.csv",
        "c264673dc08e68d1c6153b48c9039a3ea4d3ff3106b071550db34e311e25d529",
    ),
)


def load_data(
    data_dir: str | os.PathLike | None = None,
    as_dataset: bool = False,
    batch_size: int = 32,
    return_info: bool = False,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
):
    """The AliExpress sample (about 100/20 rows): tasks `"click"` and `"conversion"`.

    Small samples shipped with torch-rechub, for smoke tests only. Features:
    the 16 `categorical_*` id columns (`x["sparse"]`, int32) and the 63
    `numerical_*` columns (`x["dense"]`, float32); `search_id` is dropped.

    Args:
        data_dir: folder holding the two CSVs (or a `rec_samples`
            subfolder); defaults to `$KERAS_MTL_DATA_DIR`, then the cache.
        as_dataset: return batched `tf.data.Dataset`s.
        batch_size: batch size when `as_dataset`.
        return_info: also return a dict with the feature names and the
            vocabulary size of each sparse feature.
        download: whether missing files may be downloaded.
        cache_dir: download cache root.

    Returns:
        `(x_train, y_train), (x_test, y_test)` with `x` a dict
        `{"sparse": (n, 16), "dense": (n, 63)}` and `y` a dict
        `{task: (n, 1) float32}`; plus the info dict when `return_info`.

    Raises:
        FileNotFoundError: when the files are missing.

    Example:

    >>> from keras_mtl.datasets import aliexpress
    >>> aliexpress.TASKS
    ('click', 'conversion')

    References:
        Li et al., "Improving Multi-Scenario Learning to Rank in E-commerce
        by Exploiting Task Relationships in the Label Space", CIKM 2020.
    """
    return rec_samples.load_splits(
        FILES,
        ("train", "test"),
        TASKS,
        is_sparse=lambda c: c.startswith("categorical_"),
        is_dense=lambda c: c.startswith("numerical_"),
        data_dir=data_dir,
        as_dataset=as_dataset,
        batch_size=batch_size,
        return_info=return_info,
        download=download,
        cache_dir=cache_dir,
    )
