import numpy as np
import pytest

from keras_mtl.datasets import emotions
from tests.datasets.fit_helpers import fit_tiny

TASKS = (
    "amazed_suprised",
    "happy_pleased",
    "relaxing_calm",
    "quiet_still",
    "sad_lonely",
    "angry_aggresive",
)


def test_read_arff_dense_sparse_quoted_and_missing(tmp_path):
    path = tmp_path / "t.arff"
    path.write_text(
        "% comment\n@RELATION t\n@ATTRIBUTE a NUMERIC\n@attribute 'b c' numeric\n"
        "@attribute lab {0,1}\n\n@DATA\n1.5,-2,1\n% another comment\n{1 3.25}\n?,0,0\n"
    )
    attributes, data = emotions.read_arff(str(path))
    assert attributes == [("a", "NUMERIC"), ("b c", "numeric"), ("lab", "{0,1}")]
    np.testing.assert_array_equal(data[:2], [[1.5, -2.0, 1.0], [0.0, 3.25, 0.0]])
    assert np.isnan(data[2, 0]) and data[2, 1:].tolist() == [0.0, 0.0]


def test_read_arff_rejects_rows_of_the_wrong_width(tmp_path):
    path = tmp_path / "t.arff"
    path.write_text("@relation t\n@attribute a numeric\n@attribute b numeric\n@data\n1,2,3\n")
    with pytest.raises(ValueError, match=":5: 3 values, expected 2"):
        emotions.read_arff(str(path))


def test_emotions_shape_labels_and_published_label_statistics(data_dir):
    (x, y), (xt, yt), info = emotions.load_data(data_dir, return_info=True)
    assert info["tasks"] == TASKS and set(y) == set(TASKS)
    assert (len(x), len(xt)) == (391, 202)  # MULAN's train / test sizes
    features = np.concatenate([x, xt])
    assert features.shape == (593, 72) and np.isfinite(features).all()
    labels = np.concatenate([np.concatenate([y[t], yt[t]]) for t in TASKS], axis=1)
    assert labels.shape == (593, 6) and set(np.unique(labels)) == {0.0, 1.0}
    # MULAN's published statistics: label cardinality 1.869, density 0.311.
    assert abs(labels.sum(1).mean() - 1.869) < 0.001
    assert abs(labels.mean() - 0.311) < 0.001
    # Standardised with training statistics.
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1.0, atol=1e-4)


def test_emotions_split_is_seeded_and_unstandardised_option(data_dir):
    (a, _), _ = emotions.load_data(data_dir, seed=0, standardize=False, test_fraction=0.5)
    (b, _), _ = emotions.load_data(data_dir, seed=0, standardize=False, test_fraction=0.5)
    (c, _), (ct, _) = emotions.load_data(data_dir, seed=1, standardize=False, test_fraction=0.5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and len(c) + len(ct) == 593
    # The raw first feature (a spectral centroid mean) lies in [0, 1].
    assert 0.0 <= a[:, 0].min() and a[:, 0].max() <= 1.0
    with pytest.raises(ValueError, match="test_fraction=1.0"):
        emotions.load_data(data_dir, test_fraction=1.0)


def test_emotions_trains_end_to_end(data_dir):
    (x, y), _ = emotions.load_data(data_dir)
    history = fit_tiny(x, y, {t: "binary_crossentropy" for t in TASKS}, balancer="dwa")
    assert {f"{t}_loss" for t in TASKS} <= set(history)


def test_each_task_reads_its_own_label_column(data_dir):
    # Positives per label over the 593 clips, counted with awk from the last six
    # columns of emotions.arff (they match MULAN's published label counts). The
    # cardinality and density checks above cannot see a permutation of the tasks.
    (_, y), (_, yt) = emotions.load_data(data_dir)
    counts = {t: int(y[t].sum() + yt[t].sum()) for t in TASKS}
    assert counts == {
        "amazed_suprised": 173,
        "happy_pleased": 166,
        "relaxing_calm": 264,
        "quiet_still": 148,
        "sad_lonely": 168,
        "angry_aggresive": 189,
    }


def test_only_the_training_dataset_is_shuffled(data_dir):
    # Documented for every loader: the training dataset is shuffled, the test
    # dataset keeps the order of the numpy split (predictions line up with it).
    (x, _), (xt, _) = emotions.load_data(data_dir)
    train_ds, test_ds = emotions.load_data(data_dir, as_dataset=True, batch_size=64)
    train = np.concatenate([bx.numpy() for bx, _ in train_ds])
    np.testing.assert_array_equal(np.concatenate([bx.numpy() for bx, _ in test_ds]), xt)
    assert not np.array_equal(train, x)
    np.testing.assert_array_equal(np.sort(train[:, 0]), np.sort(x[:, 0]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed": -1}, r"`seed`, expected a non-negative integer. Received: seed=-1"),
        ({"seed": 0.5}, "seed=0.5"),
        (
            {"test_fraction": "x"},
            r"`test_fraction`, expected a float in \[0, 1\). Received: test_fraction='x'",
        ),
        ({"test_fraction": float("nan")}, "test_fraction=nan"),
        ({"test_fraction": -0.1}, r"test_fraction=-0.1"),
    ],
)
def test_seed_and_test_fraction_are_checked_before_the_file_is_read(tmp_path, kwargs, message):
    # tmp_path holds no emotions.arff: the argument error must come first.
    with pytest.raises(ValueError, match=message):
        emotions.load_data(tmp_path, download=False, cache_dir=tmp_path, **kwargs)
