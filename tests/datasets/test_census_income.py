import gzip
import os

import numpy as np
import pytest

from keras_mtl.datasets import census_income
from keras_mtl.datasets.census_income import COLUMNS
from tests.datasets.fit_helpers import fit_tiny


def _row(**values):
    """A 42-column UCI row: defaults, overridden by column name."""
    row = {c: "x" for c in COLUMNS}
    row.update(
        age="30",
        wage_per_hour="0",
        capital_gains="0",
        capital_losses="0",
        dividends_from_stocks="0",
        num_persons_worked_for_employer="0",
        weeks_worked_in_year="52",
        instance_weight="1000.0",
        marital_stat="Divorced",
        education="High school graduate",
        income="- 50000.",
    )
    row.update(values)
    return ", ".join(row[c] for c in COLUMNS)


def _write(folder, train_rows, test_rows):
    os.makedirs(folder, exist_ok=True)
    for name, rows in (("census-income.data.gz", train_rows), ("census-income.test.gz", test_rows)):
        with gzip.open(os.path.join(folder, name), "wt") as f:
            f.write("\n".join(rows) + "\n")


def test_encoding_on_a_tiny_file(tmp_path):
    train = [
        _row(age="20", sex="Female", income="50000+.", marital_stat="Never married"),
        _row(age="40", sex="Male", instance_weight="5.5"),
        _row(age="60", sex="?", education="Bachelors degree(BA AB BS)"),
    ]
    test = [
        _row(age="50", sex="Unknown-in-train", income="50000+."),
        _row(age="20", sex="Male", marital_stat="Never married"),
    ]
    _write(tmp_path, train, test)
    (x, y), (xv, yv), (xt, yt), info = census_income.load_data(
        tmp_path, return_info=True, download=False, cache_dir=tmp_path / "cache"
    )
    names = info["feature_names"]
    assert "instance_weight" not in " ".join(names)
    assert not any(n.startswith(("income", "marital_stat")) for n in names)
    assert any(n.startswith("education=") for n in names)  # a feature in group 1
    # Age standardised with the training mean 40 and population std sqrt(800/3).
    age = x[:, names.index("age")]
    np.testing.assert_allclose(age, (np.array([20, 40, 60]) - 40) / np.sqrt(800 / 3), rtol=1e-6)
    # Sex categories sorted: '?', 'Female', 'Male'; one-hot per row.
    sex = x[:, [names.index("sex=?"), names.index("sex=Female"), names.index("sex=Male")]]
    np.testing.assert_array_equal(sex, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(y["income"][:, 0], [1, 0, 0])
    np.testing.assert_array_equal(y["marital"][:, 0], [1, 0, 0])
    assert x.shape[1] == len(names)
    rest_x = np.concatenate([xv, xt])
    rest_income = np.concatenate([yv["income"], yt["income"]])[:, 0]
    # Validation and test hold one row each; the unseen category encodes as zeros.
    unseen = rest_x[rest_income == 1][0]
    assert unseen[[names.index(n) for n in names if n.startswith("sex=")]].sum() == 0
    np.testing.assert_allclose(unseen[names.index("age")], (50 - 40) / np.sqrt(800 / 3), rtol=1e-6)


def test_instance_weight_does_not_change_the_features(tmp_path):
    rows = [_row(age=str(a), sex=s) for a, s in ((20, "Male"), (30, "Female"), (50, "Male"))]
    heavier = [r.replace("1000.0", "1.5") for r in rows]
    _write(tmp_path / "a", rows, rows[:2])
    _write(tmp_path / "b", heavier, heavier[:2])
    (xa, _), _, _ = census_income.load_data(tmp_path / "a", download=False, cache_dir=tmp_path)
    (xb, _), _, _ = census_income.load_data(tmp_path / "b", download=False, cache_dir=tmp_path)
    np.testing.assert_array_equal(xa, xb)


def test_group_two_labels_and_invalid_group(tmp_path):
    train = [
        _row(education="Masters degree(MA MS MEng MEd MSW MBA)"),
        _row(education="Some college but no degree", marital_stat="Never married"),
        _row(education="12th grade no diploma", income="50000+."),
        _row(education="Children"),
    ]
    _write(tmp_path, train, train[:2])
    (x, y), _, _, info = census_income.load_data(
        tmp_path, group=2, return_info=True, download=False, cache_dir=tmp_path
    )
    assert info["tasks"] == ("education", "marital")
    np.testing.assert_array_equal(y["education"][:, 0], [1, 1, 0, 0])
    np.testing.assert_array_equal(y["marital"][:, 0], [0, 1, 0, 0])
    assert not any(n.startswith("education=") for n in info["feature_names"])
    with pytest.raises(ValueError, match="Received: group=3"):
        census_income.load_data(tmp_path, group=3, download=False)


@pytest.fixture(scope="module")
def census(data_dir):
    return census_income.load_data(data_dir, return_info=True)


def test_row_counts_and_label_facts_of_the_data_readme(census):
    (x, y), (xv, yv), (xt, yt), info = census
    assert len(x) == 199_523
    assert len(xv) + len(xt) == 99_762 and abs(len(xv) - len(xt)) <= 1
    assert round(100 * float(y["income"].mean()), 2) == 6.21
    test_income = np.concatenate([yv["income"], yt["income"]])
    assert round(100 * float(test_income.mean()), 2) == 6.20
    assert round(100 * float(y["marital"].mean()), 2) == 43.35
    r = np.corrcoef(y["income"][:, 0], y["marital"][:, 0])[0, 1]
    assert abs(r - (-0.178)) < 0.001


def test_features_are_finite_standardised_and_one_hot(census):
    (x, _), (xv, _), _, info = census
    names = info["feature_names"]
    assert x.dtype == np.float32 and np.isfinite(x).all() and np.isfinite(xv).all()
    numeric = list(census_income.NUMERIC)
    assert names[: len(numeric)] == numeric
    z = x[:, : len(numeric)].astype("float64")
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-4)
    # Every categorical attribute contributes exactly one 1 per training row.
    groups = sorted({n.split("=")[0] for n in names[len(numeric) :]})
    # 41 attributes minus the instance weight, the 7 numerics and marital_stat.
    assert len(groups) == 41 - 1 - len(numeric) - 1
    assert np.all(x[:, len(numeric) :].sum(1) == len(groups))


def test_validation_test_split_depends_only_on_the_seed(tmp_path):
    rows = [_row(age=str(20 + i)) for i in range(10)]
    _write(tmp_path, rows, rows)
    load = census_income.load_data
    _, (a, _), _ = load(tmp_path, seed=5, download=False, cache_dir=tmp_path)
    _, (b, _), _ = load(tmp_path, seed=5, download=False, cache_dir=tmp_path)
    _, (c, _), _ = load(tmp_path, seed=6, download=False, cache_dir=tmp_path)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.sort(a[:, 0]), np.sort(c[:, 0]))


def test_tf_dataset_option(tmp_path):
    rows = [_row(age=str(20 + i), income="50000+." if i % 3 == 0 else "- 50000.") for i in range(9)]
    _write(tmp_path, rows, rows[:4])
    train_ds, val_ds, test_ds = census_income.load_data(
        tmp_path, as_dataset=True, batch_size=4, download=False, cache_dir=tmp_path
    )
    xb, yb = next(iter(val_ds))
    assert tuple(xb.shape)[0] == 2 and set(yb) == {"income", "marital"}
    total = sum(float(yb["income"].numpy().sum()) for _, yb in train_ds)
    assert total == 3.0


def test_census_slice_trains_end_to_end(census):
    (x, y), _, _, _ = census
    history = fit_tiny(
        x[:512],
        {t: v[:512] for t, v in y.items()},
        {"income": "binary_crossentropy", "marital": "binary_crossentropy"},
        balancer="uw",
    )
    assert {"income_loss", "marital_loss", "income_weight"} <= set(history)


# The 17 education values of census-income.names; task group 2's label is 1 from college on.
EDUCATION = {
    "Children": 0,
    "Less than 1st grade": 0,
    "1st 2nd 3rd or 4th grade": 0,
    "5th or 6th grade": 0,
    "7th and 8th grade": 0,
    "9th grade": 0,
    "10th grade": 0,
    "11th grade": 0,
    "12th grade no diploma": 0,
    "High school graduate": 0,
    "Some college but no degree": 1,
    "Associates degree-occup /vocational": 1,
    "Associates degree-academic program": 1,
    "Bachelors degree(BA AB BS)": 1,
    "Masters degree(MA MS MEng MEd MSW MBA)": 1,
    "Prof school degree (MD DDS DVM LLB JD)": 1,
    "Doctorate degree(PhD EdD)": 1,
}


def test_group_two_label_of_every_education_value(tmp_path):
    rows = [_row(education=e) for e in EDUCATION]
    _write(tmp_path, rows, rows[:2])
    (_, y), _, _ = census_income.load_data(tmp_path, group=2, download=False, cache_dir=tmp_path)
    np.testing.assert_array_equal(y["education"][:, 0], list(EDUCATION.values()))


def test_group_two_education_count_on_the_real_training_file(data_dir):
    # Counted from column 5 of census-income.data: 27820 some college, 5358 + 4363
    # associates, 19865 bachelors, 6541 masters, 1793 prof school, 1263 doctorate.
    (_, y), _, _ = census_income.load_data(data_dir, group=2)
    assert int(y["education"].sum()) == 67_003
    assert round(100 * float(y["marital"].mean()), 2) == 43.35


def test_only_the_training_dataset_is_shuffled(tmp_path):
    # Documented: the training dataset reshuffles every epoch; validation and
    # test keep the order of the numpy splits, so predictions line up with them.
    rows = [_row(age=str(20 + i)) for i in range(12)]
    _write(tmp_path, rows, rows)
    kw = dict(seed=1, download=False, cache_dir=tmp_path)
    arrays = census_income.load_data(tmp_path, **kw)
    datasets = census_income.load_data(tmp_path, as_dataset=True, batch_size=4, **kw)
    ages = [np.concatenate([b[0].numpy()[:, 0] for b in ds]) for ds in datasets]
    for (x, _), got in zip(arrays[1:], ages[1:], strict=True):
        np.testing.assert_array_equal(got, x[:, 0])
    assert not np.array_equal(ages[0], arrays[0][0][:, 0])
    np.testing.assert_array_equal(np.sort(ages[0]), np.sort(arrays[0][0][:, 0]))


# The 7 attributes census-income.names marks "continuous" (#0, 5, 16, 17, 18, 29
# and 38 there), written out here rather than read from the module under test.
CONTINUOUS = [
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
]


def test_the_continuous_attributes_of_the_names_file_are_standardised(tmp_path):
    rows = [_row(weeks_worked_in_year=str(w), wage_per_hour=str(10 * w)) for w in (0, 26, 52)]
    _write(tmp_path, rows, rows[:2])
    (x, _), _, _, info = census_income.load_data(
        tmp_path, return_info=True, download=False, cache_dir=tmp_path
    )
    names = info["feature_names"]
    assert names[: len(CONTINUOUS)] == CONTINUOUS
    assert not any(n.startswith(tuple(c + "=" for c in CONTINUOUS)) for n in names)
    weeks = x[:, names.index("weeks_worked_in_year")]
    np.testing.assert_allclose(weeks, (np.array([0, 26, 52]) - 26) / np.sqrt(2 * 26**2 / 3))


def test_real_feature_width_is_the_documented_one(census):
    # 7 standardised columns plus one per training category of the other
    # attributes: 503 for group 1 (the docstring's count).
    (x, _), (xv, _), (xt, _), info = census
    assert x.shape[1] == xv.shape[1] == xt.shape[1] == len(info["feature_names"]) == 503


def test_a_constant_continuous_attribute_gives_zeros_not_nan(tmp_path):
    # wage_per_hour is 0 in every row of these files: standard deviation 0,
    # which must not divide (a small or filtered copy of the data can have it).
    rows = [_row(age=str(a)) for a in (20, 30, 40)]
    _write(tmp_path, rows, rows[:2])
    (x, _), (xv, _), _, info = census_income.load_data(
        tmp_path, return_info=True, download=False, cache_dir=tmp_path
    )
    assert np.isfinite(x).all() and np.isfinite(xv).all()
    np.testing.assert_array_equal(x[:, info["feature_names"].index("wage_per_hour")], 0.0)


def test_irregular_spacing_is_read_like_the_uci_layout(tmp_path):
    # The data README: comma-separated, read with skipinitialspace. Rows whose
    # fields are separated by ",  " take the csv path and must give the same arrays.
    rows = [
        _row(age="20", income="50000+.", marital_stat="Never married"),
        _row(age="40", sex="Male"),
        _row(age="60", sex="Female"),
    ]
    _write(tmp_path / "a", rows, rows[:2])
    _write(
        tmp_path / "b",
        [r.replace(", ", ",  ") for r in rows],
        [r.replace(", ", ",") for r in rows[:2]],
    )
    a = census_income.load_data(tmp_path / "a", download=False, cache_dir=tmp_path)
    b = census_income.load_data(tmp_path / "b", download=False, cache_dir=tmp_path)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        for task in ya:
            np.testing.assert_array_equal(ya[task], yb[task])
    np.testing.assert_array_equal(b[0][1]["income"][:, 0], [1, 0, 0])


def test_a_row_with_a_missing_field_is_reported(tmp_path):
    rows = [_row(), _row().rsplit(", ", 1)[0]]  # the second row lacks its label
    _write(tmp_path, rows, rows[:1])
    with pytest.raises(
        ValueError, match="expected 42 comma-separated columns per row, row 1 has 41"
    ):
        census_income.load_data(tmp_path, download=False, cache_dir=tmp_path)


@pytest.mark.parametrize(
    "damage, cause",
    [
        (lambda raw: raw[: len(raw) // 2], EOFError),  # an interrupted download
        (lambda raw: b"<html>Not Found</html>", OSError),  # not gzip at all
    ],
)
def test_a_truncated_or_corrupt_file_names_itself_its_checksum_and_the_remedy(
    tmp_path, damage, cause
):
    _write(tmp_path, [_row(), _row()], [_row()])
    path = tmp_path / "census-income.data.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError) as info:
        census_income.load_data(tmp_path, download=False, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert repr(str(path)) in message and census_income.FILES[0].sha256 in message
    assert "delete it so it is downloaded again, or replace it" in message
    assert isinstance(info.value.__cause__, cause)


@pytest.mark.parametrize("seed", [-1, 0.5, "0", True])
def test_the_seed_is_checked_before_the_files_are_read(tmp_path, seed):
    # No data files at all: the invalid seed must be reported first, not after a long parse.
    with pytest.raises(
        ValueError, match=rf"`seed`, expected a non-negative integer. Received: seed={seed!r}"
    ):
        census_income.load_data(tmp_path, seed=seed, download=False, cache_dir=tmp_path)
