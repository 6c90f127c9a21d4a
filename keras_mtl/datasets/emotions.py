"""MULAN "emotions": 593 music clips, 72 audio features, 6 emotion labels (6 binary tasks)."""

from __future__ import annotations

import io
import os

import numpy as np

from keras_mtl._validation import check_number, check_numpy_seed, check_positive_int
from keras_mtl.datasets.data_files import (
    DataFile,
    locate_files,
    parse_whole,
    reading,
    to_tf_dataset,
)

SUBDIR = "multilabel"
FILES = (
    DataFile(
        "emotions.arff",
        note=(
            "MULAN distributes it only inside emotions.rar "
            "(https://mulan.sourceforge.net/datasets-mlc.html); extract emotions.arff"
        ),
    ),
)
NUM_FEATURES = 72
NUM_LABELS = 6


def read_arff(
    path: str, data_file: DataFile | None = None
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Reads a numeric ARFF file (dense or sparse rows).

    Nominal attributes must have numeric values (as MULAN's `{0,1}` labels);
    `?` reads as NaN.

    Args:
        path: the `.arff` file.
        data_file: its `DataFile`, or `None`. When given, a malformed file
            raises `corrupt_file_error` (naming the file and the remedy)
            instead of the bare error.

    Returns:
        `(attributes, data)`: a list of `(name, type)` and a float64 array
        `(rows, len(attributes))`.

    Raises:
        OSError: when the file cannot be opened.
        ValueError: for a malformed file.

    Example:

    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.arff")
    >>> _ = open(p, "w").write(
    ...     "@relation t\\n@attribute a numeric\\n@attribute 'b c' {0,1}\\n@data\\n"
    ...     "1.5,1\\n{0 2.0}\\n"
    ... )
    >>> attrs, data = read_arff(p)
    >>> attrs, data.tolist()
    ([('a', 'numeric'), ('b c', '{0,1}')], [[1.5, 1.0], [2.0, 0.0]])
    """
    return parse_whole(path, data_file, _parse_arff)


def _parse_arff(path: str, raw: bytes) -> tuple[list[tuple[str, str]], np.ndarray]:
    attributes: list[tuple[str, str]] = []
    rows: list[list[float]] = []
    in_data = False
    # Universal newlines, as a file opened in text mode (see `read_numeric_csv`).
    lines = io.StringIO(raw.decode("utf-8", errors="replace"), newline=None)
    for number, text in enumerate(lines, 1):
        line = text.strip()
        if not line or line.startswith("%"):
            continue
        if not in_data:
            key = line.split(None, 1)[0].lower()
            if key == "@attribute":
                try:
                    rest = line.split(None, 1)[1].strip()
                    if rest[0] in "'\"":
                        end = rest.index(rest[0], 1)
                        name, kind = rest[1:end], rest[end + 1 :].strip()
                    else:
                        name, kind = rest.split(None, 1)
                except (IndexError, ValueError) as e:
                    raise ValueError(f"{path}:{number}: malformed @attribute line {line!r}.") from e
                attributes.append((name, kind.strip()))
            elif key == "@data":
                in_data = True
            continue
        try:
            if line.startswith("{"):
                row = [0.0] * len(attributes)
                for item in line.strip("{}").split(","):
                    if item.strip():
                        index, value = item.split()
                        if not 0 <= int(index) < len(attributes):
                            raise ValueError(
                                f"attribute index {index} out of range [0, {len(attributes)})"
                            )
                        row[int(index)] = float("nan") if value == "?" else float(value)
            else:
                row = [float("nan") if v.strip() == "?" else float(v) for v in line.split(",")]
        except ValueError as e:
            raise ValueError(f"{path}:{number}: cannot read the data row ({e}).") from e
        if len(row) != len(attributes):
            raise ValueError(f"{path}:{number}: {len(row)} values, expected {len(attributes)}.")
        rows.append(row)
    if not in_data:
        raise ValueError(f"{path}: no @data section.")
    return attributes, np.asarray(rows, dtype="float64").reshape(len(rows), len(attributes))


def load_data(
    data_dir: str | os.PathLike | None = None,
    test_fraction: float = 202 / 593,
    seed: int = 0,
    standardize: bool = True,
    as_dataset: bool = False,
    batch_size: int = 64,
    return_info: bool = False,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
):
    """The emotions multi-label data set as 6 binary tasks.

    Tasks (the last 6 ARFF attributes, `-` written as `_`): amazed_suprised,
    happy_pleased, relaxing_calm, quiet_still, sad_lonely, angry_aggresive
    (spelling as in the file). The file holds all 593 clips; they are split
    at random (seeded) into train and test, by default with MULAN's sizes
    391 / 202 (not MULAN's exact partition, which is a separate file).

    Args:
        data_dir: folder holding `emotions.arff` (or a `multilabel`
            subfolder); defaults to `$KERAS_MTL_DATA_DIR`.
        test_fraction: fraction of clips in the test split, in [0, 1).
        seed: seed of the split, a non-negative integer.
        standardize: standardise the features with training statistics.
        as_dataset: return batched `tf.data.Dataset`s.
        batch_size: batch size when `as_dataset`.
        return_info: also return a dict with `tasks` and `feature_names`.
        download: accepted for the common signature; there is no official
            single-file download, so a missing file raises.
        cache_dir: download cache root (searched for the file).

    Returns:
        `(x_train, y_train), (x_test, y_test)` with float32 `x` `(n, 72)` and
        `y` `{task: (n, 1) float32}`; datasets when `as_dataset`; plus the
        info dict when `return_info`.

    Raises:
        ValueError: for an invalid `test_fraction`, `seed` or `batch_size`
            (checked before the file is read), or a truncated or malformed
            file (the message names it and the remedy).
        FileNotFoundError: when `data_dir` does not exist or the file is
            missing.

    Example:

    >>> from keras_mtl.datasets import emotions
    >>> emotions.NUM_FEATURES, emotions.NUM_LABELS
    (72, 6)

    References:
        Trohidis et al., "Multi-label classification of music into emotions",
        ISMIR 2008.
    """
    test_fraction = check_number(
        "test_fraction", test_fraction, "a float in [0, 1)", lambda v: not 0 <= v < 1
    )
    seed = check_numpy_seed(seed)
    batch_size = check_positive_int("batch_size", batch_size)
    paths = locate_files(SUBDIR, FILES, data_dir=data_dir, download=download, cache_dir=cache_dir)
    (data_file,) = FILES
    path = paths[data_file.name]
    attributes, data = read_arff(path, data_file)
    with reading(path, data_file):
        if len(attributes) != NUM_FEATURES + NUM_LABELS:
            raise ValueError(
                f"expected {NUM_FEATURES + NUM_LABELS} attributes, found {len(attributes)}"
            )
        if len(data) == 0:
            raise ValueError("no data rows")
        labels = data[:, NUM_FEATURES:]
        bad = ~np.isin(labels, (0.0, 1.0))
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"label {attributes[NUM_FEATURES + column][0]!r} of data row {row + 1} is "
                f"{float(labels[row, column])!r}, expected 0 or 1"
            )
    tasks = tuple(name.replace("-", "_") for name, _ in attributes[NUM_FEATURES:])
    x_all = data[:, :NUM_FEATURES]
    y_all = data[:, NUM_FEATURES:]
    n = len(data)
    num_test = round(n * test_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(perm[:num_test]), np.sort(perm[num_test:])
    if standardize:
        mean = x_all[train_idx].mean(0)
        std = x_all[train_idx].std(0)
        x_all = (x_all - mean) / np.where(std > 0, std, 1.0)
    x_all = x_all.astype("float32")

    def take(idx):
        return x_all[idx], {t: y_all[idx, i : i + 1].astype("float32") for i, t in enumerate(tasks)}

    splits = (take(train_idx), take(test_idx))
    if as_dataset:
        splits = tuple(
            to_tf_dataset(x, y, batch_size=batch_size, shuffle=i == 0, seed=seed)
            for i, (x, y) in enumerate(splits)
        )
    if return_info:
        info = {"tasks": tasks, "feature_names": [a for a, _ in attributes[:NUM_FEATURES]]}
        return (*splits, info)
    return splits
