import gzip
import os
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from keras_mtl.datasets import multi_fashion, multi_fashion_mnist, multi_mnist
from tests.datasets.fit_helpers import fit_tiny


def reference_image(left, right, offset):
    """Independent reference: paste with PIL (max where they overlap), resize with PIL NEAREST."""
    canvas = np.zeros((36, 36), dtype="uint8")
    canvas[:28, :28] = left
    for i in range(28):
        for j in range(28):
            canvas[offset + i, offset + j] = max(canvas[offset + i, offset + j], right[i, j])
    return np.asarray(Image.fromarray(canvas).resize((28, 28), Image.NEAREST))


def test_overlay_matches_a_pil_reference():
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, size=(5, 28, 28), dtype="uint8")
    right = rng.integers(0, 256, size=(5, 28, 28), dtype="uint8")
    for offset in (6, 8, 0):
        out = multi_mnist.overlay(left, right, right_offset=offset)
        for k in range(5):
            np.testing.assert_array_equal(out[k], reference_image(left[k], right[k], offset))


def test_overlay_places_items_top_left_and_bottom_right():
    left = np.zeros((1, 28, 28), "uint8")
    right = np.zeros((1, 28, 28), "uint8")
    left[0, :4, :4] = 255  # top-left corner of the left item
    right[0, -4:, -4:] = 128  # bottom-right corner of the right item
    out = multi_mnist.overlay(left, right, right_offset=8)[0]
    assert out[:3, :3].min() == 255 and out[-3:, -3:].min() == 128
    assert out[8:20, 8:20].max() == 0


def test_overlay_validates_arguments():
    a = np.zeros((2, 28, 28), "uint8")
    with pytest.raises(ValueError, match="right_offset=9"):
        multi_mnist.overlay(a, a, right_offset=9)
    with pytest.raises(ValueError, match="right_offset=4.0"):
        multi_mnist.overlay(a, a, right_offset=4.0)
    np.testing.assert_array_equal(
        multi_mnist.overlay(a, a, right_offset=np.int64(4)),
        multi_mnist.overlay(a, a, right_offset=4),
    )
    with pytest.raises(ValueError, match="same shape"):
        multi_mnist.overlay(a, a[:1])


def _write_idx(path, array):
    header = (0x800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())


def _write_sources(folder, n_train=40, n_test=10):
    rng = np.random.default_rng(1)
    os.makedirs(folder / "mnist")
    os.makedirs(folder / "fashion_mnist")
    mnist = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype="uint8"),
        "y_train": rng.integers(0, 10, n_train).astype("uint8"),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype="uint8"),
        "y_test": rng.integers(0, 10, n_test).astype("uint8"),
    }
    np.savez(folder / "mnist" / "mnist.npz", **mnist)
    fashion = {k: rng.permutation(v) for k, v in mnist.items()}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        _write_idx(
            folder / "fashion_mnist" / f"{prefix}-images-idx3-ubyte.gz", fashion[f"x_{split}"]
        )
        _write_idx(
            folder / "fashion_mnist" / f"{prefix}-labels-idx1-ubyte.gz", fashion[f"y_{split}"]
        )
    return mnist, fashion


@pytest.mark.parametrize("variant", multi_mnist.VARIANTS)
def test_generated_images_and_labels_come_from_the_named_sources(tmp_path, variant):
    mnist, fashion = _write_sources(tmp_path)
    left_src = fashion if variant == "fashion" else mnist
    right_src = mnist if variant == "mnist" else fashion
    (x, y), (xt, yt), info = multi_mnist.load_data(
        tmp_path, variant=variant, seed=3, normalize=False, return_info=True, download=False
    )
    assert x.shape == (40, 28, 28, 1) and xt.shape == (10, 28, 28, 1) and x.dtype == np.uint8
    r = info["train_right_index"]
    assert sorted(r.tolist()) == list(range(40))  # each right item used once
    np.testing.assert_array_equal(y["left"], left_src["y_train"])
    np.testing.assert_array_equal(y["right"], right_src["y_train"][r])
    np.testing.assert_array_equal(yt["right"], right_src["y_test"][info["test_right_index"]])
    for k in (0, 17, 39):
        expected = reference_image(left_src["x_train"][k], right_src["x_train"][r[k]], 6)
        np.testing.assert_array_equal(x[k, ..., 0], expected)


def test_thin_modules_are_the_variants(tmp_path):
    _write_sources(tmp_path)
    kw = dict(seed=2, download=False)
    for module, variant in ((multi_fashion, "fashion"), (multi_fashion_mnist, "fashion_mnist")):
        (a, ya), _ = module.load_data(tmp_path, **kw)
        (b, yb), _ = multi_mnist.load_data(tmp_path, variant=variant, **kw)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya["right"], yb["right"])
    with pytest.raises(ValueError, match="variant='kmnist'"):
        multi_mnist.load_data(tmp_path, variant="kmnist", download=False)


def test_real_multi_mnist_is_deterministic_and_labelled_from_the_source(data_dir):
    (x, y), (xt, yt), info = multi_mnist.load_data(data_dir, seed=0, return_info=True)
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    (x2, y2), (xt2, _) = multi_mnist.load_data(data_dir, seed=0)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(xt, xt2)
    np.testing.assert_array_equal(y["right"], y2["right"])
    (x3, y3), _ = multi_mnist.load_data(data_dir, seed=1)
    assert not np.array_equal(y["right"], y3["right"]) and not np.array_equal(x, x3)

    (src_x, src_y), (src_xt, src_yt) = multi_mnist.load_source("mnist", data_dir)
    np.testing.assert_array_equal(y["left"], src_y)
    np.testing.assert_array_equal(y["right"], src_y[info["train_right_index"]])
    np.testing.assert_array_equal(yt["right"], src_yt[info["test_right_index"]])
    # Both tasks are 10-class with the MNIST class frequencies.
    np.testing.assert_array_equal(np.bincount(y["right"]), np.bincount(src_y))
    for k in (0, 12345, 59999):
        expected = reference_image(src_x[k], src_x[info["train_right_index"][k]], 6)
        np.testing.assert_array_equal(np.round(x[k, ..., 0] * 255).astype("uint8"), expected)


def test_real_fashion_sources_have_the_official_sizes(data_dir):
    (x, y), (xt, yt) = multi_mnist.load_source("fashion", data_dir)
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(yt), [1000] * 10)
    (mx, my), _ = multi_fashion_mnist.load_data(data_dir, normalize=False)
    mnist_y = multi_mnist.load_source("mnist", data_dir)[0][1]
    np.testing.assert_array_equal(my["left"], mnist_y)
    np.testing.assert_array_equal(np.bincount(my["right"]), [6000] * 10)


def test_multi_mnist_slice_trains_end_to_end(tmp_path):
    _write_sources(tmp_path, n_train=128, n_test=8)
    (x, y), _ = multi_mnist.load_data(tmp_path, download=False)
    inputs = keras.Input((28, 28, 1))

    def trunk(t):
        t = keras.layers.Conv2D(4, 5, activation="relu")(t)
        t = keras.layers.MaxPooling2D(2)(t)
        return keras.layers.Flatten()(t)

    loss = "sparse_categorical_crossentropy"
    history = fit_tiny(x, y, {"left": loss, "right": loss}, inputs=inputs, trunk=trunk)
    assert {"left_loss", "right_loss"} <= set(history)


def test_test_split_pairing_uses_seed_plus_one(tmp_path):
    # Documented: the pairing of the training split is seeded with `seed`, that of
    # the test split with `seed + 1` (a permutation of the right source each).
    _write_sources(tmp_path)
    _, _, info = multi_mnist.load_data(tmp_path, seed=3, return_info=True, download=False)
    np.testing.assert_array_equal(
        info["train_right_index"], np.random.default_rng(3).permutation(40)
    )
    np.testing.assert_array_equal(
        info["test_right_index"], np.random.default_rng(4).permutation(10)
    )


def test_idx_reader_checks_the_magic_number(tmp_path):
    # The magic number 0x0803 / 0x0801 says how many dimensions follow; a
    # labels file read as images (or a truncated header) must not be reshaped.
    labels = np.arange(6, dtype="uint8")
    _write_idx(tmp_path / "labels.gz", labels)
    path, data_file = str(tmp_path / "labels.gz"), multi_mnist.FASHION_FILES[1]
    np.testing.assert_array_equal(multi_mnist._read_idx(path, 1, data_file), labels)
    with pytest.raises(ValueError, match="not an IDX file of 3 dimension"):
        multi_mnist._read_idx(path, 3, data_file)


def test_smaller_right_source_is_sampled_at_random_with_replacement():
    # With fewer right items than images, each image draws a right item at
    # random (seeded); its label follows the drawn item.
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (12, 28, 28), dtype="uint8")
    right = rng.integers(0, 256, (3, 28, 28), dtype="uint8")
    right_labels = np.array([7, 8, 9])
    _, y0, r0 = multi_mnist.generate(left, np.arange(12), right, right_labels, seed=0)
    _, _, r0b = multi_mnist.generate(left, np.arange(12), right, right_labels, seed=0)
    _, _, r1 = multi_mnist.generate(left, np.arange(12), right, right_labels, seed=1)
    assert r0.shape == (12,) and set(r0.tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(y0["right"], right_labels[r0])
    np.testing.assert_array_equal(r0, r0b)
    assert not np.array_equal(r0, r1)
    np.testing.assert_array_equal(r0, np.random.default_rng(0).integers(0, 3, size=12))


def test_only_the_training_dataset_is_shuffled(tmp_path):
    # The test dataset keeps the order of the numpy split; the training one is shuffled.
    _write_sources(tmp_path)
    (_, y), (_, yt), info = multi_mnist.load_data(tmp_path, return_info=True, download=False)
    train_ds, test_ds = multi_mnist.load_data(
        tmp_path, as_dataset=True, batch_size=8, download=False
    )
    right = np.concatenate([by["right"].numpy() for _, by in test_ds])
    np.testing.assert_array_equal(right, yt["right"])
    left = np.concatenate([by["left"].numpy() for _, by in train_ds])
    assert sorted(left.tolist()) == sorted(y["left"].tolist())
    assert not np.array_equal(left, y["left"])


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize(
    "variant, folder, index, cause",
    [
        ("mnist", "mnist", None, zipfile.BadZipFile),
        ("fashion", "fashion_mnist", 2, EOFError),
        ("fashion_mnist", "fashion_mnist", 1, EOFError),
    ],
)
def test_a_truncated_source_file_names_itself_its_checksum_and_the_remedy(
    tmp_path, variant, folder, index, cause
):
    _write_sources(tmp_path, n_train=4, n_test=2)
    data_file = multi_mnist.MNIST_FILES[0] if index is None else multi_mnist.FASHION_FILES[index]
    path = tmp_path / folder / data_file.name
    _truncate(path)
    with pytest.raises(ValueError) as info:
        multi_mnist.load_data(tmp_path, variant=variant, download=False, cache_dir=tmp_path)
    message = str(info.value)
    assert repr(str(path)) in message and data_file.sha256 in message
    assert "delete it so it is downloaded again, or replace it" in message
    assert isinstance(info.value.__cause__, cause)


def test_an_npz_without_the_keras_arrays_is_reported_as_corrupt(tmp_path):
    os.makedirs(tmp_path / "mnist")
    np.savez(tmp_path / "mnist" / "mnist.npz", x_train=np.zeros((1, 28, 28), "uint8"))
    with pytest.raises(ValueError, match=r"mnist\.npz.*KeyError.*y_train") as info:
        multi_mnist.load_source("mnist", tmp_path, download=False, cache_dir=tmp_path)
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("seed", [-1, 0.5, None])
def test_an_invalid_seed_is_named_before_any_file_is_read(tmp_path, seed):
    message = rf"`seed`, expected a non-negative integer. Received: seed={seed!r}"
    # tmp_path holds no source files: the seed error must come first.
    for load in (multi_mnist.load_data, multi_fashion.load_data, multi_fashion_mnist.load_data):
        with pytest.raises(ValueError, match=message):
            load(tmp_path, seed=seed, download=False, cache_dir=tmp_path)
    images = np.zeros((2, 28, 28), "uint8")
    with pytest.raises(ValueError, match=message):
        multi_mnist.generate(images, np.zeros(2), images, np.zeros(2), seed=seed)
