"""Shared reader of the Ali-CCP and AliExpress sample tables (see `ali_ccp`, `aliexpress`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from keras_mtl._validation import check_positive_int
from keras_mtl.datasets.data_files import (
    DataFile,
    locate_files,
    read_numeric_csv,
    reading,
    to_tf_dataset,
)

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

    Args:
        files: one `DataFile` per split, in the order of `splits`.
        splits: the split names, for the info dict.
        tasks: the label columns.
        is_sparse: whether a column is a sparse (id) feature.
        is_dense: whether a column is a dense (float) feature.
        data_dir: folder holding the files (see `locate_files`).
        as_dataset: return batched `tf.data.Dataset`s (the first split
            shuffled) instead of arrays.
        batch_size: batch size of the datasets.
        return_info: also return the info dict.
        download: whether missing files may be downloaded.
        cache_dir: download cache root.

    Returns:
        One `(x, y)` pair (or dataset) per split, then the info dict when
        `return_info`.

    Raises:
        FileNotFoundError: when a file is missing.
        ValueError: for an invalid `batch_size` (checked before any file is
            read); when the tables' columns differ or a label column is
            missing; or when a table is truncated or corrupt: not UTF-8
            text, no header, no data row, a field that is not a number, a
            sparse id that is not a non-negative integer or a label that is
            not 0, 1 or NaN (the message names the file, its official
            SHA-256 and the remedy).

    Example:

    >>> import os, tempfile
    >>> from keras_mtl.datasets.data_files import DataFile
    >>> from keras_mtl.datasets.rec_samples import load_splits
    >>> root = tempfile.mkdtemp()
    >>> _ = open(os.path.join(root, "a.csv"), "w").write("click,id,price\\n1,4,0.5\\n0,2,1.5\\n")
    >>> _ = open(os.path.join(root, "b.csv"), "w").write("click,id,price\\n0,9,2.0\\n")
    >>> (x, y), (xt, yt), info = load_splits(
    ...     [DataFile("a.csv"), DataFile("b.csv")], ("train", "test"), ("click",),
    ...     is_sparse=lambda c: c == "id", is_dense=lambda c: c == "price", data_dir=root,
    ...     as_dataset=False, batch_size=2, return_info=True, download=False, cache_dir=root)
    >>> x["sparse"].tolist(), x["dense"].tolist(), y["click"].tolist()
    ([[4], [2]], [[0.5], [1.5]], [[1.0], [0.0]])
    >>> info["vocabulary_sizes"]  # the largest id over both splits, plus one
    {'id': 10}
    """
    batch_size = check_positive_int("batch_size", batch_size)
    paths = locate_files(SUBDIR, files, data_dir=data_dir, download=download, cache_dir=cache_dir)
    tables = [read_numeric_csv(paths[f.name], f) for f in files]
    names = tables[0][0]
    for f, (other, _) in zip(files, tables, strict=True):
        if other != names:
            raise ValueError(f"{f.name}: columns differ from {files[0].name}.")
    missing = [t for t in tasks if t not in names]
    if missing:
        raise ValueError(
            f"{files[0].name}: missing label columns {missing}; its columns are {names}."
        )
    sparse = [c for c in names if is_sparse(c)]
    dense = [c for c in names if is_dense(c)]
    col = {c: i for i, c in enumerate(names)}
    for f, (_, values) in zip(files, tables, strict=True):
        with reading(paths[f.name], f):
            _check_values(values, sparse, tasks, col)
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


def _check_values(values: np.ndarray, sparse, tasks, col) -> None:
    """Raises `ValueError` for a table without rows, a sparse id that is not a
    non-negative integer, or a label that is not 0, 1 or NaN (a missing label)."""
    if len(values) == 0:
        raise ValueError("no data rows below the header")
    for c in sparse:
        v = values[:, col[c]]
        bad = ~(np.isfinite(v) & (v >= 0) & (v == np.floor(v)) & (v <= np.iinfo("int32").max))
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"column {c!r}, data row {row + 1}: {float(v[row])!r} is not a non-negative integer id"
            )
    for t in tasks:
        v = values[:, col[t]]
        bad = ~(np.isnan(v) | (v == 0) | (v == 1))
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"label column {t!r}, data row {row + 1}: {float(v[row])!r} is not 0 or 1"
            )
