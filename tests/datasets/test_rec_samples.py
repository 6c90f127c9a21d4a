import keras
import numpy as np
import pytest

from keras_mtl.datasets import ali_ccp, aliexpress
from tests.datasets.fit_helpers import fit_tiny


def test_ali_ccp_schema(data_dir):
    train, val, test, info = ali_ccp.load_data(data_dir, return_info=True)
    assert info["splits"] == ("train", "val", "test")
    assert len(info["sparse_features"]) == 23 and len(info["dense_features"]) == 8
    assert info["dense_features"] == list(ali_ccp.DENSE_FEATURES)
    assert [len(s[0]["sparse"]) for s in (train, val, test)] == [100, 50, 50]
    for x, y in (train, val, test):
        assert x["sparse"].dtype == np.int32 and x["dense"].dtype == np.float32
        assert set(y) == {"click", "purchase"}
        # A purchase is only observed after a click (ESMM's entire-space chain).
        assert (y["purchase"] <= y["click"]).all()
        for j, name in enumerate(info["sparse_features"]):
            assert 0 <= x["sparse"][:, j].min()
            assert x["sparse"][:, j].max() < info["vocabulary_sizes"][name]
    assert train[1]["click"].sum() > 0


def test_aliexpress_schema(data_dir):
    train, test, info = aliexpress.load_data(data_dir, return_info=True)
    assert len(info["sparse_features"]) == 16 and len(info["dense_features"]) == 63
    assert "search_id" not in info["sparse_features"] + info["dense_features"]
    assert (len(train[0]["dense"]), len(test[0]["dense"])) == (100, 20)
    for x, y in (train, test):
        assert set(y) == {"click", "conversion"}
        assert (y["conversion"] <= y["click"]).all()
        assert np.isfinite(x["dense"]).all()


def test_rec_sample_tables_must_share_columns(tmp_path):
    header = "click,purchase,101,D508\n"
    (tmp_path / "ali_ccp_train_sample.csv").write_text(header + "1,0,3,0.5\n")
    (tmp_path / "ali_ccp_val_sample.csv").write_text(header + "0,0,1,0.1\n")
    (tmp_path / "ali_ccp_test_sample.csv").write_text("click,purchase,102,D508\n0,0,1,0.1\n")
    with pytest.raises(ValueError, match="columns differ"):
        ali_ccp.load_data(tmp_path, download=False)
    (tmp_path / "ali_ccp_test_sample.csv").write_text(header + "0,0,x,0.1\n")
    with pytest.raises(ValueError, match="non-numeric"):
        ali_ccp.load_data(tmp_path, download=False)
    (tmp_path / "ali_ccp_test_sample.csv").write_text(header + "1,1,4,0.2\n")
    (train_x, train_y), _, (test_x, _), info = ali_ccp.load_data(
        tmp_path, download=False, return_info=True
    )
    assert info["vocabulary_sizes"] == {"101": 5}  # largest id 4 is in the test split
    np.testing.assert_allclose(train_x["dense"], [[0.5]])
    np.testing.assert_array_equal(test_x["sparse"], [[4]])


def test_ali_ccp_sample_trains_end_to_end_from_tf_data(data_dir):
    train_ds, _, _, info = ali_ccp.load_data(
        data_dir, as_dataset=True, batch_size=32, return_info=True
    )
    num_sparse = len(info["sparse_features"])
    vocab = max(info["vocabulary_sizes"].values())
    inputs = {
        "sparse": keras.Input((num_sparse,), dtype="int32", name="sparse"),
        "dense": keras.Input((len(info["dense_features"]),), name="dense"),
    }

    def trunk(t):
        emb = keras.layers.Flatten()(keras.layers.Embedding(vocab, 4)(t["sparse"]))
        return keras.layers.Concatenate()([emb, t["dense"]])

    history = fit_tiny(
        train_ds,
        None,
        {"click": "binary_crossentropy", "purchase": "binary_crossentropy"},
        batch_size=None,
        inputs=inputs,
        trunk=trunk,
    )
    assert {"click_loss", "purchase_loss"} <= set(history)


def test_only_the_first_split_dataset_is_shuffled(tmp_path):
    # Documented: the first (training) split is shuffled; validation and test
    # keep the file order, so predictions line up with the numpy labels.
    header = "click,purchase,101,D508\n"
    for split in ("train", "val", "test"):
        rows = "".join(f"{i % 2},0,{i},{i / 10}\n" for i in range(40))
        (tmp_path / f"ali_ccp_{split}_sample.csv").write_text(header + rows)
    datasets = ali_ccp.load_data(tmp_path, as_dataset=True, batch_size=8, download=False)
    ids = [np.concatenate([bx["sparse"].numpy()[:, 0] for bx, _ in ds]) for ds in datasets]
    assert sorted(ids[0].tolist()) == list(range(40)) and ids[0].tolist() != list(range(40))
    for got in ids[1:]:
        np.testing.assert_array_equal(got, np.arange(40))
