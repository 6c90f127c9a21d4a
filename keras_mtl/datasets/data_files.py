"""Locating dataset files: a given folder, `$KERAS_MTL_DATA_DIR`, the download cache, a download.

Every real-data loader of `keras_mtl.datasets` reads its files through
`locate_files`, so all of them look in the same places in the same order and
fail with the same kind of message when the files are nowhere.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from keras_mtl._validation import (
    check_integer,
    check_numpy_seed,
    check_positive_int,
    invalid_value,
    is_number,
)

ENV_VAR = "KERAS_MTL_DATA_DIR"


class DataFile(NamedTuple):
    """One file a loader needs.

    Attributes:
        name: file name, as stored in the dataset's folder.
        origin: official download URL, or `None` where the file has no
            official single-file download (the error then says where the
            file comes from).
        sha256: SHA-256 of the file at `origin`, checked by
            `keras.utils.get_file` after a download. Files found on disk are
            read as they are, like a user's own copy.
        note: where to get the file by hand when `origin` is `None`.

    Example:

    A file that is nowhere and has no download: the error ends with its note.

    >>> import tempfile
    >>> from keras_mtl.datasets.data_files import DataFile, locate_files
    >>> f = DataFile("table.csv", note="ask the authors for table.csv")
    >>> f.origin is None, f.sha256 is None
    (True, True)
    >>> empty = tempfile.mkdtemp()
    >>> try:
    ...     locate_files("toy", [f], data_dir=empty, download=False, cache_dir=empty)
    ... except FileNotFoundError as error:
    ...     print(str(error).splitlines()[-1])
      table.csv: ask the authors for table.csv
    """

    name: str
    origin: str | None = None
    sha256: str | None = None
    note: str = ""


def default_cache_dir() -> str:
    """The folder downloads and parsed caches go to: `~/.keras/datasets/keras_mtl`.

    Returns:
        `$KERAS_HOME/datasets/keras_mtl` when `KERAS_HOME` is set, else
        `~/.keras/datasets/keras_mtl`.

    Example:

    >>> import os
    >>> from unittest import mock
    >>> from keras_mtl.datasets.data_files import default_cache_dir
    >>> with mock.patch.dict(os.environ, {"KERAS_HOME": "/data/keras"}):
    ...     default_cache_dir()
    '/data/keras/datasets/keras_mtl'
    """
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return os.path.join(os.path.expanduser(keras_home), "datasets", "keras_mtl")


def cache_root(cache_dir=None) -> str:
    """The cache folder to use: `cache_dir`, a leading `~` expanded, or
    `default_cache_dir()` when it is `None`.

    Args:
        cache_dir: a folder, or `None`.

    Returns:
        The folder's path.

    Example:

    >>> import os
    >>> from keras_mtl.datasets.data_files import cache_root, default_cache_dir
    >>> cache_root("~/cache") == os.path.join(os.path.expanduser("~"), "cache")
    True
    >>> cache_root() == default_cache_dir()
    True
    """
    return default_cache_dir() if cache_dir is None else os.path.expanduser(os.fspath(cache_dir))


def _candidate_dirs(subdir: str, data_dir: str | None) -> list[str]:
    if data_dir is not None:
        roots = [data_dir]
    elif os.environ.get(ENV_VAR):
        # A value quoted in a shell or read from a .env file keeps its `~`.
        roots = [os.path.expanduser(os.environ[ENV_VAR])]
    else:
        roots = []
    dirs = []
    for root in roots:
        # Accept both the dataset's own folder and the root holding all datasets.
        dirs += [os.path.join(root, subdir), root]
    return dirs


def locate_files(
    subdir: str,
    files: Sequence[DataFile],
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Finds (or downloads) the files of one dataset.

    Each file is looked for, in order, in `data_dir` (or, when `data_dir` is
    `None`, in the folder named by the `KERAS_MTL_DATA_DIR` environment
    variable), both directly and in its `subdir` subfolder; then in the
    download cache `cache_dir/subdir`. Files still missing are downloaded
    from their official origin with `keras.utils.get_file`, which checks the
    SHA-256, when `download` is true.

    A leading `~` in `data_dir`, `cache_dir` or `KERAS_MTL_DATA_DIR` is the
    user's home folder.

    Args:
        subdir: the dataset's folder name, for example `"census_income_kdd"`.
        files: the `DataFile`s needed.
        data_dir: folder holding the files, or `None`. It must exist: a
            mistyped folder is not silently replaced by the cache.
        download: whether missing files may be downloaded.
        cache_dir: download cache root; defaults to
            `~/.keras/datasets/keras_mtl`.

    Returns:
        A dict from file name to its path on disk.

    Raises:
        FileNotFoundError: when `data_dir` is not an existing folder, or when
            a file is in none of the places and cannot be downloaded; the
            message names the files and the folders searched.

    Example:

    >>> import tempfile
    >>> from keras_mtl.datasets.data_files import DataFile, locate_files
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "a.csv"), "w").write("x\\n")
    >>> paths = locate_files("toy", [DataFile("a.csv")], data_dir=folder, download=False)
    >>> os.path.basename(paths["a.csv"])
    'a.csv'
    """
    if data_dir is not None:
        given, data_dir = data_dir, os.path.expanduser(os.fspath(data_dir))
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(
                f"Received an invalid value for `data_dir`, expected an existing folder holding "
                f"the {subdir!r} data files ({', '.join(f.name for f in files)}). "
                f"Received: data_dir={given!r}"
            )
    cache = cache_root(cache_dir)
    cache_sub = os.path.join(cache, subdir)
    searched = _candidate_dirs(subdir, data_dir) + [cache_sub]
    found: dict[str, str] = {}
    missing: list[DataFile] = []
    for f in files:
        for folder in searched:
            path = os.path.join(folder, f.name)
            if os.path.isfile(path):
                found[f.name] = path
                break
        else:
            missing.append(f)
    if not missing:
        return found

    def _fail(reason: str, cause: BaseException | None = None):
        lines = [
            f"Could not find the {subdir!r} data files "
            + ", ".join(repr(f.name) for f in missing)
            + f" ({reason}).",
            "Looked in: " + ", ".join(repr(d) for d in searched) + ".",
            f"Pass `data_dir=` or set the {ENV_VAR} environment variable to a folder holding "
            f"them (directly or in a {subdir!r} subfolder).",
        ]
        for f in missing:
            if f.origin:
                lines.append(f"  {f.name}: official download {f.origin}")
            elif f.note:
                lines.append(f"  {f.name}: {f.note}")
        error = FileNotFoundError("\n".join(lines))
        if cause is not None:
            raise error from cause
        raise error

    if not download:
        _fail("download=False")
    no_origin = [f for f in missing if not f.origin]
    if no_origin:
        _fail("no official single-file download exists for " + ", ".join(f.name for f in no_origin))
    import keras

    for f in missing:
        try:
            found[f.name] = keras.utils.get_file(
                fname=f.name,
                origin=f.origin,
                file_hash=f.sha256,
                hash_algorithm="sha256",
                cache_dir=cache,
                cache_subdir=subdir,
            )
        except Exception as e:  # noqa: BLE001 - get_file raises bare Exception offline.
            _fail(f"download failed: {type(e).__name__}: {e}", e)
    return found


def split_indices(num: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Splits `range(num)` at random into consecutive parts of the given fractions.

    Args:
        num: number of items, a non-negative integer.
        fractions: fractions in [0, 1] summing to 1; the last part takes
            the rounding.
        seed: seed of the permutation, a non-negative integer.

    Returns:
        A list of sorted index arrays, one per fraction.

    Raises:
        ValueError: for an invalid `num`, `fractions` or `seed`.

    Example:

    >>> [len(p) for p in split_indices(11, (0.5, 0.5), seed=0)]
    [5, 6]
    """
    num = check_integer("num", num, "a non-negative integer", lambda v: v < 0)
    seed = check_numpy_seed(seed)
    try:
        valid = len(fractions) > 0 and all(is_number(f) and 0 <= f <= 1 for f in fractions)
    except TypeError:
        valid = False
    # Parts that do not add up to 1 would silently shrink or grow the last part.
    if not valid or abs(sum(fractions) - 1.0) > 1e-6:
        raise invalid_value(
            "fractions", fractions, "a non-empty sequence of numbers in [0, 1] summing to 1"
        )
    perm = np.random.default_rng(seed).permutation(num)
    parts, start = [], 0
    for i, frac in enumerate(fractions):
        stop = num if i == len(fractions) - 1 else start + int(num * frac)
        parts.append(np.sort(perm[start:stop]))
        start = stop
    return parts


# What reading a truncated or damaged file raises: gzip (EOFError, BadGzipFile,
# an OSError, and zlib.error), zip and npz (BadZipFile), numpy and the parsers
# (ValueError; IndexError or KeyError for a missing field or array).
CORRUPT_FILE_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    zipfile.BadZipFile,
    ValueError,
    IndexError,
    KeyError,
)


def corrupt_file_error(path: str, data_file: DataFile, error: BaseException | str) -> ValueError:
    """The error for a data file found on disk that cannot be read (to raise `from` the cause).

    Args:
        path: the file.
        data_file: its `DataFile`, for the official checksum and the remedy.
        error: the exception raised while reading it, or a description.

    Returns:
        A `ValueError` naming the file, what went wrong, the official
        SHA-256 when known, and what to do.

    Example:

    >>> f = DataFile("a.gz", "https://example.org/a.gz", "ab" * 32)
    >>> message = str(corrupt_file_error("/data/a.gz", f, EOFError("Compressed file ended")))
    >>> "'/data/a.gz'" in message, "(EOFError: Compressed file ended)" in message, f.sha256 in message
    (True, True, True)
    >>> message.endswith("delete it so it is downloaded again, or replace it.")
    True
    """
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    message = f"Could not read the data file {path!r}, it is truncated or corrupt ({error})."
    if data_file.sha256:
        message += f" The official file has SHA-256 {data_file.sha256};"
    if data_file.origin:
        message += " delete it so it is downloaded again, or replace it."
    else:
        message += " replace it" + (f" ({data_file.note})." if data_file.note else ".")
    return ValueError(message)


@contextlib.contextmanager
def reading(path: str, data_file: DataFile) -> Iterator[None]:
    """Turns the errors of decoding a damaged `data_file` into `corrupt_file_error`.

    Open the file before entering it: a file that cannot be opened (no
    permission, say) is not corrupt, and keeps its own error.

    Args:
        path: the file being read.
        data_file: its `DataFile`.

    Yields:
        Nothing; the block reads the file.

    Raises:
        ValueError: from any of `CORRUPT_FILE_ERRORS` raised in the block,
            which stays chained as the cause.

    Example:

    >>> import gzip
    >>> try:
    ...     with reading("/data/a.gz", DataFile("a.gz", note="ask for a.gz")):
    ...         gzip.decompress(b"not gzip")
    ... except ValueError as error:
    ...     print(type(error.__cause__).__name__, str(error).endswith("(ask for a.gz)."))
    BadGzipFile True
    """
    try:
        yield
    except CORRUPT_FILE_ERRORS as err:
        raise corrupt_file_error(path, data_file, err) from err


def parse_whole(path: str, data_file: DataFile | None, parse):
    """Reads the file `path` in one go and returns `parse(path, content)`.

    Args:
        path: the file.
        data_file: its `DataFile`, or `None` for a file of the user's own.
        parse: a function of the path and the bytes.

    Returns:
        What `parse` returns.

    Raises:
        OSError: when the file cannot be opened.
        ValueError: from `parse`; with `data_file`, any of
            `CORRUPT_FILE_ERRORS` becomes `corrupt_file_error`.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = open(path, "wb").write(b"abc")
    >>> parse_whole(path, None, lambda p, raw: raw.upper())
    b'ABC'
    """
    # Opened outside `reading`: a file that cannot be opened is not corrupt.
    with open(path, "rb") as f:
        raw = f.read()
    if data_file is None:
        return parse(path, raw)
    with reading(path, data_file):
        return parse(path, raw)


def gunzip(path: str, data_file: DataFile) -> bytes:
    """The decompressed content of the gzip file `path`, read in one go
    (several times faster than streaming lines).

    Args:
        path: the file.
        data_file: its `DataFile`, for the message of a damaged file.

    Returns:
        The bytes.

    Raises:
        OSError: when the file cannot be opened.
        ValueError: when it is truncated or not gzip (`corrupt_file_error`).

    Example:

    >>> import gzip, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.gz")
    >>> _ = open(path, "wb").write(gzip.compress(b"x,y"))
    >>> gunzip(path, DataFile("a.gz"))
    b'x,y'
    """
    # Opened outside `reading`: a file that cannot be opened is not corrupt.
    with open(path, "rb") as f:
        raw = f.read()
    with reading(path, data_file):
        return gzip.decompress(raw)


def to_tf_dataset(
    x,
    y,
    batch_size: int = 256,
    shuffle: bool = False,
    seed: int | None = None,
):
    """Wraps numpy features and label dicts in a batched, prefetched `tf.data.Dataset`.

    Args:
        x: an array or a dict of arrays with the same first dimension.
        y: a dict `{task: array}`.
        batch_size: batch size.
        shuffle: whether to reshuffle every epoch (use for training data).
        seed: shuffle seed.

    Returns:
        A `tf.data.Dataset` of `(x, y)` batches.

    Example:

    >>> ds = to_tf_dataset(np.zeros((5, 2)), {"a": np.ones((5, 1))}, batch_size=2)
    >>> [int(b[0].shape[0]) for b in ds]
    [2, 2, 1]
    """
    import tensorflow as tf

    batch_size = check_positive_int("batch_size", batch_size)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        first = next(iter(x.values())) if isinstance(x, dict) else x
        ds = ds.shuffle(len(first), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def read_numeric_csv(path: str, data_file: DataFile | None = None) -> tuple[list[str], np.ndarray]:
    """Reads a headed CSV of numbers (no quoting) into its column names and a float64 array.

    Args:
        path: the file.
        data_file: its `DataFile`, or `None`. When given, a file that cannot
            be decoded or parsed raises `corrupt_file_error` (naming the
            file, its official SHA-256 and the remedy) instead of the bare
            error.

    Returns:
        `(names, values)` with `values` of shape `(rows, len(names))`.

    Raises:
        OSError: when the file cannot be opened.
        ValueError: when the file is empty or not UTF-8 text, a row has the
            wrong number of fields or a field is not a number.

    Example:

    >>> import os, tempfile
    >>> from keras_mtl.datasets.data_files import read_numeric_csv
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(path, "w").write("a,b\\n1,2.5\\n\\n3,-4\\n")
    >>> names, values = read_numeric_csv(path)
    >>> names, values.tolist()
    (['a', 'b'], [[1.0, 2.5], [3.0, -4.0]])
    >>> _ = open(path, "w").write("a,b\\n1,2\\n3\\n")
    >>> read_numeric_csv(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...t.csv: row 2 has 1 fields, expected 2.
    """
    return parse_whole(path, data_file, _parse_numeric_csv)


def _parse_numeric_csv(path: str, raw: bytes) -> tuple[list[str], np.ndarray]:
    # Universal newlines, as a file opened in text mode: `str.splitlines`
    # would also split at form feeds and Unicode line separators.
    text = io.StringIO(raw.decode("utf-8"), newline=None)
    lines = [line.strip() for line in text if line.strip()]
    if not lines:
        raise ValueError(f"{path}: the file is empty, expected a header row of column names.")
    names = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    for i, r in enumerate(rows):
        if len(r) != len(names):
            raise ValueError(f"{path}: row {i + 1} has {len(r)} fields, expected {len(names)}.")
    try:
        values = np.asarray(rows, dtype="float64").reshape(len(rows), len(names))
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric field ({e}).") from e
    return names, values
