"""Shared reader of the Ali-CCP and AliExpress sample tables (see `ali_ccp`, `aliexpress`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from keras_mtl.datasets.data_files import DataFile, locate_files, read_numeric_csv, to_tf_dataset

SUBDIR = "rec_samples"


def load_splits(
    files: Sequence[DataFile],
    splits: Sequence[str],
    tasks: Sequence[str],
    is_sparse: Callable[[str], bool],
    is_dense: Callable[[str], bool],
    data_dir: str | os.PathLike | None,
    as_dataset: bool,
    batch_size: int,
    return_info: bool,
    download: bool,
    cache_dir: str | os.PathLike | None,
):
    """Reads one table per split into `({"sparse", "dense"}, {task: y})` pairs.

    Sparse columns become int32 ids, dense columns float32 values, the task
    columns `(n, 1)` float32 labels; other columns are dropped. The info dict
    has the column names and each sparse feature's vocabulary size (largest
    id over all splits + 1, so an embedding table covers every split).
    """
    paths = locate_files(SUBDIR, files, data_dir=data_dir, download=download, cache_dir=cache_dir)
    tables = [read_numeric_csv(paths[f.name]) for f in files]
    names = tables[0][0]
    for f, (other, _) in zip(files, tables, strict=True):
        if other != names:
            raise ValueError(f"{f.name}: columns differ from {files[0].name}.")
    missing = [t for t in tasks if t not in names]
    if missing:
        raise ValueError(f"{files[0].name}: missing label columns {missing}.")
    sparse = [c for c in names if is_sparse(c)]
    dense = [c for c in names if is_dense(c)]
    col = {c: i for i, c in enumerate(names)}
    out = []
    for _, values in tables:
        x = {
            "sparse": values[:, [col[c] for c in sparse]].astype("int32"),
            "dense": values[:, [col[c] for c in dense]].astype("float32"),
        }
        y = {t: values[:, col[t]].astype("float32")[:, None] for t in tasks}
        out.append((x, y))
    vocab = np.max([x["sparse"].max(axis=0) for x, _ in out], axis=0) + 1
    result = tuple(out)
    if as_dataset:
        result = tuple(
            to_tf_dataset(x, y, batch_size=batch_size, shuffle=i == 0, seed=0)
            for i, (x, y) in enumerate(out)
        )
    if return_info:
        info = {
            "splits": tuple(splits),
            "tasks": tuple(tasks),
            "sparse_features": sparse,
            "dense_features": dense,
            "vocabulary_sizes": dict(zip(sparse, vocab.tolist(), strict=True)),
        }
        return (*result, info)
    return result
