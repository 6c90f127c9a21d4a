import os

import keras
import numpy as np
import pytest

from keras_mtl.datasets import (
    ali_ccp,
    aliexpress,
    census_income,
    emotions,
    multi_fashion,
    multi_fashion_mnist,
    multi_mnist,
    qm9,
)
from keras_mtl.datasets.data_files import (
    ENV_VAR,
    DataFile,
    default_cache_dir,
    locate_files,
    reading,
    split_indices,
    to_tf_dataset,
)


def _touch(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_finds_files_in_data_dir_and_in_its_dataset_subfolder(tmp_path):
    a = _touch(str(tmp_path / "a.csv"))
    b = _touch(str(tmp_path / "toy" / "b.csv"))
    paths = locate_files(
        "toy",
        [DataFile("a.csv"), DataFile("b.csv")],
        data_dir=tmp_path,
        download=False,
        cache_dir=tmp_path / "cache",
    )
    assert paths == {"a.csv": a, "b.csv": b}


def test_environment_variable_is_used_only_without_data_dir(tmp_path, monkeypatch):
    env_file = _touch(str(tmp_path / "env" / "toy" / "a.csv"))
    arg_file = _touch(str(tmp_path / "arg" / "a.csv"))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    cache = tmp_path / "cache"
    got = locate_files("toy", [DataFile("a.csv")], download=False, cache_dir=cache)
    assert got["a.csv"] == env_file
    got = locate_files(
        "toy", [DataFile("a.csv")], data_dir=tmp_path / "arg", download=False, cache_dir=cache
    )
    assert got["a.csv"] == arg_file


def test_falls_back_to_the_download_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    cached = _touch(str(tmp_path / "cache" / "toy" / "a.csv"))
    got = locate_files("toy", [DataFile("a.csv")], download=False, cache_dir=tmp_path / "cache")
    assert got["a.csv"] == cached


def test_missing_file_error_names_files_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        locate_files(
            "toy",
            [DataFile("a.csv", "https://example.org/a.csv", "0" * 64), DataFile("b.csv")],
            data_dir=tmp_path,
            download=False,
            cache_dir=tmp_path / "cache",
        )
    message = str(info.value)
    assert "'a.csv'" in message and "'b.csv'" in message
    assert str(tmp_path) in message and os.path.join(str(tmp_path), "cache", "toy") in message
    assert "download=False" in message and "https://example.org/a.csv" in message


def test_download_uses_get_file_with_the_sha256(tmp_path, monkeypatch):
    calls = []

    def fake_get_file(**kwargs):
        calls.append(kwargs)
        return _touch(os.path.join(kwargs["cache_dir"], kwargs["cache_subdir"], kwargs["fname"]))

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    got = locate_files(
        "toy",
        [DataFile("a.csv", "https://example.org/a.csv", "ab" * 32)],
        data_dir=tmp_path,
        cache_dir=tmp_path / "cache",
    )
    assert len(calls) == 1
    assert calls[0]["origin"] == "https://example.org/a.csv"
    assert calls[0]["file_hash"] == "ab" * 32 and calls[0]["hash_algorithm"] == "sha256"
    assert got["a.csv"] == os.path.join(str(tmp_path / "cache"), "toy", "a.csv")


def test_offline_download_failure_becomes_a_clear_error(tmp_path, monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://example.org/a.csv: None -- offline")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(FileNotFoundError, match="download failed.*offline") as info:
        locate_files(
            "toy",
            [DataFile("a.csv", "https://example.org/a.csv", "ab" * 32)],
            data_dir=tmp_path,
            cache_dir=tmp_path / "cache",
        )
    assert "'a.csv'" in str(info.value)


def test_files_without_an_official_download_are_not_fetched(tmp_path):
    # The autouse fixture fails the test if get_file is called.
    with pytest.raises(FileNotFoundError, match="no official single-file download"):
        locate_files(
            "toy",
            [DataFile("a.csv", note="get it by hand")],
            data_dir=tmp_path,
            cache_dir=tmp_path / "cache",
        )


LOADERS = {
    "census_income": (census_income.load_data, ["census-income.data.gz", "census-income.test.gz"]),
    "multi_mnist": (multi_mnist.load_data, ["mnist.npz"]),
    "multi_fashion": (multi_fashion.load_data, ["train-images-idx3-ubyte.gz"]),
    "multi_fashion_mnist": (multi_fashion_mnist.load_data, ["mnist.npz"]),
    "qm9": (qm9.load_data, ["qm9_targets.csv.gz", "qm9_geometry.csv.gz"]),
    "emotions": (emotions.load_data, ["emotions.arff"]),
    "ali_ccp": (ali_ccp.load_data, ["ali_ccp_train_sample.csv"]),
    "aliexpress": (aliexpress.load_data, ["aliexpress_train_sample.csv"]),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_every_loader_names_the_missing_files_and_where_it_looked(name, tmp_path):
    load, expected = LOADERS[name]
    with pytest.raises(FileNotFoundError) as info:
        load(data_dir=tmp_path, download=False, cache_dir=tmp_path / "cache")
    message = str(info.value)
    for f in expected:
        assert repr(f) in message
    assert str(tmp_path) in message


@pytest.mark.parametrize("name", ["census_income", "multi_mnist", "ali_ccp"])
def test_loaders_with_an_official_source_try_it_and_report_offline(name, tmp_path, monkeypatch):
    origins = []

    def offline(**kwargs):
        origins.append(kwargs["origin"])
        raise Exception("URL fetch failure: offline")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    load, expected = LOADERS[name]
    with pytest.raises(FileNotFoundError, match="download failed"):
        load(data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert origins and all(o.startswith("https://") for o in origins)
    assert any(o.endswith(expected[0]) for o in origins)


def test_split_indices_is_a_seeded_partition():
    a, b = split_indices(99762, (0.5, 0.5), seed=0)
    assert len(a) == len(b) == 49881
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(99762))
    a2, _ = split_indices(99762, (0.5, 0.5), seed=0)
    a3, _ = split_indices(99762, (0.5, 0.5), seed=1)
    assert np.array_equal(a, a2) and not np.array_equal(a, a3)


def test_to_tf_dataset_batches_dict_inputs_and_labels():
    x = {"sparse": np.arange(10).reshape(5, 2), "dense": np.ones((5, 3), "float32")}
    y = {"a": np.arange(5, dtype="float32")[:, None]}
    batches = list(to_tf_dataset(x, y, batch_size=2))
    assert [int(bx["sparse"].shape[0]) for bx, _ in batches] == [2, 2, 1]
    np.testing.assert_array_equal(
        np.concatenate([by["a"].numpy() for _, by in batches])[:, 0], np.arange(5)
    )
    shuffled = list(to_tf_dataset(x, y, batch_size=5, shuffle=True, seed=1))
    assert sorted(shuffled[0][1]["a"].numpy()[:, 0].tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="batch_size"):
        to_tf_dataset(x, y, batch_size=0)
    with pytest.raises(ValueError, match="batch_size=True"):
        to_tf_dataset(x, y, batch_size=True)
    assert len(list(to_tf_dataset(x, y, batch_size=np.int64(2)))) == 3


@pytest.mark.parametrize(
    "subdir, files",
    [
        (census_income.SUBDIR, census_income.FILES),
        ("rec_samples", ali_ccp.FILES),
        ("rec_samples", aliexpress.FILES),
    ],
)
def test_declared_sha256_matches_the_unchanged_shared_copies(data_dir, subdir, files):
    # The data README: these folders hold the upstream files unchanged, so the
    # checksum get_file verifies after a download must be theirs.
    import hashlib

    for f in files:
        with open(os.path.join(data_dir, subdir, f.name), "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == f.sha256, f.name


def _epoch_orders(ds, epochs=2):
    return [np.concatenate([by["a"].numpy()[:, 0] for _, by in ds]).tolist() for _ in range(epochs)]


def test_shuffled_dataset_reshuffles_each_epoch_and_follows_its_seed():
    # Training data: a new order every epoch (two equal orders of 50 items have
    # odds 1/50!), the same sequence of orders for the same seed.
    x = np.arange(50, dtype="float32")[:, None]
    y = {"a": np.arange(50, dtype="float32")[:, None]}
    first, second = _epoch_orders(to_tf_dataset(x, y, batch_size=8, shuffle=True, seed=3))
    assert sorted(first) == sorted(second) == list(range(50)) and first != second
    again = _epoch_orders(to_tf_dataset(x, y, batch_size=8, shuffle=True, seed=3))
    other = _epoch_orders(to_tf_dataset(x, y, batch_size=8, shuffle=True, seed=4))
    assert again == [first, second] and other[0] != first
    # A full-size shuffle buffer: with a buffer of k items the first 8 outputs
    # would all come from the first k + 7 inputs.
    assert max(first[:8]) > 20 and max(second[:8]) > 20
    assert _epoch_orders(to_tf_dataset(x, y, batch_size=8), 1)[0] == list(range(50))


def test_split_indices_parts_are_sorted():
    # Documented as sorted, so split rows keep the file order.
    for part in split_indices(101, (0.2, 0.3, 0.5), seed=0):
        assert np.all(np.diff(part) > 0)


def test_data_dir_wins_over_the_download_cache(tmp_path):
    # Documented order: the given folder first, the cache last; a user's own
    # copy must not be shadowed by an older cached download.
    mine = _touch(str(tmp_path / "mine" / "a.csv"))
    _touch(str(tmp_path / "cache" / "toy" / "a.csv"))
    got = locate_files(
        "toy",
        [DataFile("a.csv")],
        data_dir=tmp_path / "mine",
        download=False,
        cache_dir=tmp_path / "cache",
    )
    assert got["a.csv"] == mine


def test_a_data_dir_that_does_not_exist_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    # A mistyped folder must not silently give the cached (or a downloaded) copy.
    cached = _touch(str(tmp_path / "cache" / "toy" / "a.csv"))
    files = [DataFile("a.csv", "https://example.org/a.csv", "ab" * 32)]
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError) as info:
        locate_files("toy", files, data_dir=missing, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "`data_dir`" in message and f"data_dir={missing!r}" in message
    assert "'toy'" in message and "a.csv" in message
    # A file is not a folder either.
    with pytest.raises(FileNotFoundError, match="`data_dir`"):
        locate_files("toy", files, data_dir=cached, cache_dir=tmp_path / "cache")
    # Unchanged: an environment variable naming no folder still falls back to the cache.
    monkeypatch.setenv(ENV_VAR, str(missing))
    got = locate_files("toy", files, download=False, cache_dir=tmp_path / "cache")
    assert got["a.csv"] == cached


def test_a_leading_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    mine = _touch(str(tmp_path / "data" / "toy" / "a.csv"))
    files = [DataFile("a.csv")]
    got = locate_files("toy", files, data_dir="~/data", download=False, cache_dir=tmp_path)
    assert got["a.csv"] == mine
    monkeypatch.setenv(ENV_VAR, "~/data")
    assert locate_files("toy", files, download=False, cache_dir=tmp_path)["a.csv"] == mine
    monkeypatch.delenv(ENV_VAR)
    cached = _touch(str(tmp_path / "c" / "toy" / "a.csv"))
    assert locate_files("toy", files, download=False, cache_dir="~/c")["a.csv"] == cached
    monkeypatch.setenv("KERAS_HOME", "~/kh")
    assert default_cache_dir() == os.path.join(str(tmp_path), "kh", "datasets", "keras_mtl")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed": -1}, r"`seed`, expected a non-negative integer. Received: seed=-1"),
        ({"seed": 0.5}, "seed=0.5"),
        ({"seed": None}, "seed=None"),
        ({"num": -3}, "num=-3"),
        ({"fractions": (0.2, 0.2)}, r"`fractions`.*summing to 1. Received: fractions=\(0.2, 0.2\)"),
        ({"fractions": (1.5, -0.5)}, r"fractions=\(1.5, -0.5\)"),
        ({"fractions": ()}, r"fractions=\(\)"),
        ({"fractions": 1.0}, "fractions=1.0"),
        ({"fractions": ("a", "b")}, r"fractions=\('a', 'b'\)"),
    ],
)
def test_split_indices_names_an_invalid_argument(kwargs, message):
    args = {"num": 10, "fractions": (0.5, 0.5), "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        split_indices(**args)


def test_split_indices_accepts_numpy_scalars():
    a = split_indices(np.int64(10), (np.float32(0.3), 0.7), seed=np.int64(1))
    b = split_indices(10, (0.3, 0.7), seed=1)
    assert [p.tolist() for p in a] == [p.tolist() for p in b]


def test_reading_turns_a_decoding_error_into_a_clear_one_and_keeps_the_cause():
    import gzip

    f = DataFile("a.gz", "https://example.org/a.gz", "ab" * 32)
    with pytest.raises(ValueError) as info, reading("/data/a.gz", f):
        gzip.decompress(gzip.compress(b"x" * 100)[:-8])
    message = str(info.value)
    assert "'/data/a.gz'" in message and "EOFError" in message and "ab" * 32 in message
    assert "delete it so it is downloaded again, or replace it" in message
    assert isinstance(info.value.__cause__, EOFError)
    # Without an official download the remedy is the file's note.
    with pytest.raises(ValueError, match=r"replace it \(ask the authors\)\.$"):
        with reading("/data/b.csv", DataFile("b.csv", note="ask the authors")):
            raise IndexError("list index out of range")
