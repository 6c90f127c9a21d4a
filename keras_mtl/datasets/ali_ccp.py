"""Ali-CCP (Taobao click and conversion) sample tables, for ESMM / MMoE / PLE smoke tests."""

from __future__ import annotations

import os

from keras_mtl.datasets import rec_samples
from keras_mtl.datasets.data_files import DataFile

TASKS = ("click", "purchase")
DENSE_FEATURES = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")
_ORIGIN = (
    "https://raw.githubusercontent.com/datawhalechina/torch-rechub/main/examples/ranking/data/"
    "ali-ccp/"
)
FILES = (
    DataFile(
        "ali_ccp_train_sample.csv",
        _ORIGIN + "ali_ccp_train_sample.csv",
        "1c1d125bcdfca70c8f5ed24f6221acadab3e19b70e0b06b3eb3adb2af7a0f9b5",
    ),
    DataFile(
        "ali_ccp_val_sample.csv",
        _ORIGIN + "ali_ccp_val_sample.csv",
        "1236e1504b76bf7ceb48dbe3d999ae8b49f61fcda2d684578320fd9fc7821104",
    ),
    DataFile(
        "ali_ccp_test_sample.csv",
        _ORIGIN + "ali_ccp_test_sample.csv",
        "9764a9b8e53b25f85c00e08a89f65ecfadab100cb0834161bd7ef671b7702a09",
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
    """The Ali-CCP sample (about 100/50/50 rows): tasks `"click"` and `"purchase"`.

    These are the small samples shipped with torch-rechub, only fit for
    smoke tests of CTR/CVR models, not for results. Features: the 23
    categorical id columns (`x["sparse"]`, int32) and the 8 `D*` numeric
    columns (`x["dense"]`, float32). A purchase implies a click, so ESMM's
    CTCVR label is `purchase` itself.

    Args:
        data_dir: folder holding the three CSVs (or a `rec_samples`
            subfolder); defaults to `$KERAS_MTL_DATA_DIR`, then the cache.
        as_dataset: return batched `tf.data.Dataset`s.
        batch_size: batch size when `as_dataset`.
        return_info: also return a dict with the feature names and the
            vocabulary size of each sparse feature.
        download: whether missing files may be downloaded.
        cache_dir: download cache root.

    Returns:
        `(x_train, y_train), (x_val, y_val), (x_test, y_test)` with `x` a
        dict `{"sparse": (n, 23), "dense": (n, 8)}` and `y` a dict
        `{task: (n, 1) float32}`; plus the info dict when `return_info`.

    Raises:
        FileNotFoundError: when the files are missing.

    Example:

    >>> from keras_mtl.datasets import ali_ccp
    >>> ali_ccp.TASKS
    ('click', 'purchase')

    References:
        Ma et al., "Entire Space Multi-Task Model", SIGIR 2018.
    """
    return rec_samples.load_splits(
        FILES,
        ("train", "val", "test"),
        TASKS,
        is_sparse=lambda c: c not in TASKS and c not in DENSE_FEATURES,
        is_dense=lambda c: c in DENSE_FEATURES,
        data_dir=data_dir,
        as_dataset=as_dataset,
        batch_size=batch_size,
        return_info=return_info,
        download=download,
        cache_dir=cache_dir,
    )
