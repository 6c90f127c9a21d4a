"""MultiMNIST, MultiFashion and Multi-(Fashion+MNIST): two overlaid items, one task per item."""

from __future__ import annotations

import os

import numpy as np

from keras_mtl._validation import check_integer, check_numpy_seed, check_positive_int
from keras_mtl.datasets.data_files import DataFile, gunzip, locate_files, reading, to_tf_dataset

TASKS = ("left", "right")
CANVAS = 36
SIZE = 28
VARIANTS = ("mnist", "fashion", "fashion_mnist")

MNIST_FILES = (
    DataFile(
        "mnist.npz",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
        # The checksum Keras uses for this file (keras.datasets.mnist).
        "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    ),
)
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Checksums of the official Zalando files (as recorded by tensorflow-datasets).
FASHION_FILES = (
    DataFile(
        "train-images-idx3-ubyte.gz",
        _FASHION + "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    DataFile(
        "train-labels-idx1-ubyte.gz",
        _FASHION + "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ),
    DataFile(
        "t10k-images-idx3-ubyte.gz",
        _FASHION + "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ),
    DataFile(
        "t10k-labels-idx1-ubyte.gz",
        _FASHION + "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ),
)


def _read_idx(path: str, ndim: int, data_file: DataFile) -> np.ndarray:
    data = gunzip(path, data_file)
    with reading(path, data_file):
        magic = int.from_bytes(data[:4], "big")
        if magic != 0x800 + ndim:
            raise ValueError(f"not an IDX file of {ndim} dimension(s) (magic {magic:#x})")
        shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_source(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
):
    """The single-item source images: `"mnist"` or `"fashion"`.

    Args:
        name: `"mnist"` (read from `mnist/mnist.npz`) or `"fashion"` (the four
            IDX files in `fashion_mnist/`).
        data_dir: folder holding the files or their dataset subfolders;
            defaults to `$KERAS_MTL_DATA_DIR`, then the download cache.
        download: whether missing files may be downloaded.
        cache_dir: download cache root.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: uint8 images `(n, 28, 28)` and
        uint8 labels `(n,)`.

    Raises:
        FileNotFoundError: when `data_dir` does not exist, or the files are
            missing and cannot be downloaded.
        ValueError: for another `name`, or a truncated or corrupt file (the
            message names it and its official SHA-256).

    Example:

    A tiny `mnist/mnist.npz` written here (one 28 x 28 image per split):

    >>> import os, tempfile
    >>> import numpy as np
    >>> from keras_mtl.datasets.multi_mnist import load_source
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "mnist"))
    >>> images = np.arange(2 * 28 * 28, dtype="uint8").reshape(2, 28, 28)
    >>> np.savez(os.path.join(root, "mnist", "mnist.npz"), x_train=images[:1],
    ...          y_train=np.array([7], "uint8"), x_test=images[1:], y_test=np.array([3], "uint8"))
    >>> (x, y), (xt, yt) = load_source("mnist", data_dir=root, download=False)
    >>> x.shape, y.tolist(), yt.tolist(), int(xt[0, 0, 0])
    ((1, 28, 28), [7], [3], 16)
    """
    if name == "mnist":
        (npz,) = MNIST_FILES
        path = locate_files("mnist", MNIST_FILES, data_dir, download, cache_dir)[npz.name]
        with open(path, "rb") as fh, reading(path, npz), np.load(fh, allow_pickle=False) as f:
            return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    if name == "fashion":
        p = locate_files("fashion_mnist", FASHION_FILES, data_dir, download, cache_dir)
        # FASHION_FILES lists train images, train labels, test images, test labels.
        x, y, xt, yt = (
            _read_idx(p[f.name], ndim, f)
            for f, ndim in zip(FASHION_FILES, (3, 1, 3, 1), strict=True)
        )
        return (x, y), (xt, yt)
    raise ValueError(
        "Received an invalid value for `name`, expected 'mnist' or 'fashion'. "
        f"Received: name={name!r}"
    )


def _nearest_index(src: int, dst: int) -> np.ndarray:
    # Pixel-centre nearest-neighbour sampling (what PIL's NEAREST resize does).
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype("int64"), src - 1)


def overlay(left: np.ndarray, right: np.ndarray, right_offset: int = 6) -> np.ndarray:
    """Overlays item pairs on a 36 x 36 canvas and resizes the result to 28 x 28.

    The left item is placed at the top-left corner, the right item shifted
    by `right_offset` pixels down and right; where they overlap the brighter
    pixel wins. The canvas is then resized to 28 x 28 with nearest-neighbour
    sampling.

    Args:
        left: uint8 images `(n, 28, 28)` for the top-left position.
        right: uint8 images `(n, 28, 28)` for the bottom-right position.
        right_offset: shift of the right item in canvas pixels, in [0, 8].
            The default 6 is Sener & Koltun's generator; 8 puts the item
            flush with the bottom-right corner.

    Returns:
        uint8 images `(n, 28, 28)`.

    Example:

    >>> a = np.zeros((1, 28, 28), "uint8"); a[0, 0, 0] = 255
    >>> b = np.zeros((1, 28, 28), "uint8"); b[0, -1, -1] = 200
    >>> out = overlay(a, b, right_offset=8)
    >>> int(out[0, 0, 0]), int(out[0, -1, -1]), int(out.sum())
    (255, 200, 455)
    """
    right_offset = check_integer(
        "right_offset",
        right_offset,
        f"an integer in [0, {CANVAS - SIZE}]",
        lambda v: not 0 <= v <= CANVAS - SIZE,
    )
    if left.shape != right.shape or left.shape[1:] != (SIZE, SIZE):
        raise ValueError(
            f"Expected `left` and `right` of the same shape (n, {SIZE}, {SIZE}). "
            f"Received: left.shape={left.shape}, right.shape={right.shape}"
        )
    idx = _nearest_index(CANVAS, SIZE)
    out = np.empty(left.shape, dtype="uint8")
    o = right_offset
    # Chunks keep the 36 x 36 canvas small in memory for 60k images.
    for start in range(0, len(left), 8192):
        stop = start + 8192
        canvas = np.zeros((len(left[start:stop]), CANVAS, CANVAS), dtype="uint8")
        canvas[:, :SIZE, :SIZE] = left[start:stop]
        region = canvas[:, o : o + SIZE, o : o + SIZE]
        np.maximum(region, right[start:stop], out=region)
        out[start:stop] = canvas[:, idx][:, :, idx]
    return out


def generate(
    left_images: np.ndarray,
    left_labels: np.ndarray,
    right_images: np.ndarray,
    right_labels: np.ndarray,
    seed: int = 0,
    right_offset: int = 6,
):
    """Builds one split: every left item paired with a random right item.

    Item `i` of the left source goes to the top-left of image `i`; the right
    items are a seeded random permutation of the right source (each used
    once when both sources have the same size).

    Args:
        left_images: uint8 `(n, 28, 28)`.
        left_labels: `(n,)`.
        right_images: uint8 `(m, 28, 28)`.
        right_labels: `(m,)`.
        seed: seed of the pairing, a non-negative integer.
        right_offset: see `overlay`.

    Returns:
        `(images, {"left": labels, "right": labels}, right_index)` with
        uint8 images `(n, 28, 28)`, int32 labels and the index of each
        image's right item in the right source.

    Raises:
        ValueError: for an invalid `seed` or `right_offset`, or images of
            the wrong shape.

    Example:

    >>> imgs = np.arange(3 * 28 * 28, dtype="uint16").reshape(3, 28, 28).astype("uint8")
    >>> x, y, r = generate(imgs, np.array([0, 1, 2]), imgs, np.array([0, 1, 2]), seed=1)
    >>> x.shape, y["left"].tolist(), bool((y["right"] == r).all())
    ((3, 28, 28), [0, 1, 2], True)
    """
    seed = check_numpy_seed(seed)
    n, m = len(left_images), len(right_images)
    rng = np.random.default_rng(seed)
    if m >= n:
        right_index = rng.permutation(m)[:n]
    else:
        right_index = rng.integers(0, m, size=n)
    images = overlay(left_images, right_images[right_index], right_offset=right_offset)
    labels = {
        "left": np.asarray(left_labels, dtype="int32"),
        "right": np.asarray(right_labels, dtype="int32")[right_index],
    }
    return images, labels, right_index


def load_data(
    data_dir: str | os.PathLike | None = None,
    variant: str = "mnist",
    seed: int = 0,
    right_offset: int = 6,
    normalize: bool = True,
    as_dataset: bool = False,
    batch_size: int = 256,
    return_info: bool = False,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
):
    """MultiMNIST-style two-task image classification, generated from a seed.

    Each image overlays a top-left item and a bottom-right item (see
    `overlay`); task `"left"` classifies the top-left item, task `"right"`
    the bottom-right one (10 classes each). Training images are built from
    the 60,000 training items and test images from the 10,000 test items, so
    no source item is shared between the splits. The same seed gives the same
    data.

    Variants: `"mnist"` (MultiMNIST, two digits), `"fashion"`
    (MultiFashion, two Fashion-MNIST items), `"fashion_mnist"`
    (Multi-(Fashion+MNIST): a digit top-left, a Fashion item bottom-right).

    Args:
        data_dir: folder holding `mnist/mnist.npz` and the `fashion_mnist/`
            IDX files (or the files directly); defaults to
            `$KERAS_MTL_DATA_DIR`, then the download cache.
        variant: one of `VARIANTS`.
        seed: seed of the pairing, a non-negative integer (the test split
            uses `seed + 1`).
        right_offset: shift of the right item on the canvas (see `overlay`).
        normalize: return float32 images in [0, 1] rather than uint8.
        as_dataset: return batched `tf.data.Dataset`s.
        batch_size: batch size when `as_dataset`.
        return_info: also return a dict with the source indices of each
            image (`"train_right_index"`, `"test_right_index"`; the left index
            of image `i` is `i`).
        download: whether missing files may be downloaded.
        cache_dir: download cache root.

    Returns:
        `(x_train, y_train), (x_test, y_test)` with images `(n, 28, 28, 1)`
        and `y` dicts `{"left": (n,), "right": (n,)}` of int32 class ids;
        datasets instead when `as_dataset`; the info dict third when
        `return_info`.

    Raises:
        ValueError: for an unknown variant, an invalid `seed`,
            `right_offset` or `batch_size` (checked before the files are
            read), or a truncated or corrupt source file.
        FileNotFoundError: when `data_dir` does not exist or the source
            files are missing.

    Example:

    >>> from keras_mtl.datasets import multi_mnist
    >>> multi_mnist.TASKS
    ('left', 'right')

    References:
        Sener & Koltun, "Multi-Task Learning as Multi-Objective
        Optimization", NeurIPS 2018. Lin et al., "Pareto Multi-Task
        Learning", NeurIPS 2019.
    """
    if variant not in VARIANTS:
        raise ValueError(
            f"Received an invalid value for `variant`, expected one of {VARIANTS}. "
            f"Received: variant={variant!r}"
        )
    seed = check_numpy_seed(seed)
    # Checked before the source files are read and decoded (seconds), not after.
    check_integer(
        "right_offset",
        right_offset,
        f"an integer in [0, {CANVAS - SIZE}]",
        lambda v: not 0 <= v <= CANVAS - SIZE,
    )
    batch_size = check_positive_int("batch_size", batch_size)
    left_name, right_name = {
        "mnist": ("mnist", "mnist"),
        "fashion": ("fashion", "fashion"),
        "fashion_mnist": ("mnist", "fashion"),
    }[variant]
    left = load_source(left_name, data_dir, download, cache_dir)
    right = (
        left if right_name == left_name else load_source(right_name, data_dir, download, cache_dir)
    )
    splits, info = [], {}
    for i, split in enumerate(("train", "test")):
        (li, ll), (ri, rl) = left[i], right[i]
        x, y, right_index = generate(li, ll, ri, rl, seed=seed + i, right_offset=right_offset)
        x = x[..., None]
        if normalize:
            x = x.astype("float32") / 255.0
        splits.append((x, y))
        info[f"{split}_right_index"] = right_index
    splits = tuple(splits)
    if as_dataset:
        splits = tuple(
            to_tf_dataset(x, y, batch_size=batch_size, shuffle=i == 0, seed=seed)
            for i, (x, y) in enumerate(splits)
        )
    if return_info:
        return (*splits, info)
    return splits
