"""Loaders on bad input: damaged files give the corrupt-file error, arguments are checked first."""

import gzip
import os

import numpy as np
import pytest

from keras_mtl.datasets import (
    ali_ccp,
    aliexpress,
    census_income,
    emotions,
    multi_fashion,
    multi_mnist,
    qm9,
)
from keras_mtl.datasets.data_files import read_numeric_csv
from tests.datasets.test_census_income import _row, _write

LABELS = (
    "amazed-suprised",
    "happy-pleased",
    "relaxing-calm",
    "quiet-still",
    "sad-lonely",
    "angry-aggresive",
)


def _arff(rows):
    header = ["@relation emotions"]
    header += [f"@attribute f{i} numeric" for i in range(emotions.NUM_FEATURES)]
    header += [f"@attribute {name} {{0,1}}" for name in LABELS]
    return "\n".join([*header, "@data", *rows]) + "\n"


def _arff_row(labels=(1, 0, 0, 0, 0, 1), value=0.5):
    return ",".join([str(value)] * emotions.NUM_FEATURES + [str(v) for v in labels])


def _assert_corrupt(info, path, data_file):
    message = str(info.value)
    assert f"Could not read the data file {str(path)!r}, it is truncated or corrupt" in message
    if data_file.sha256:
        assert data_file.sha256 in message
    if data_file.origin:
        assert message.endswith("delete it so it is downloaded again, or replace it.")
    else:
        assert message.endswith(f"replace it ({data_file.note}).")
    assert info.value.__cause__ is not None
    return message


def test_a_good_tiny_emotions_file_loads(tmp_path):
    (tmp_path / "emotions.arff").write_text(_arff([_arff_row(), _arff_row((0,) * 6, 1.5)]))
    (x, y), (xt, yt) = emotions.load_data(tmp_path, test_fraction=0.5, download=False)
    assert x.shape == (1, 72) and xt.shape == (1, 72) and len(y) == 6


@pytest.mark.parametrize(
    "content, reason",
    [
        # An interrupted copy: the last row stops half-way.
        (lambda: _arff([_arff_row(), _arff_row()])[:-40], ":82: cannot read the data row"),
        (lambda: _arff([_arff_row(), _arff_row()])[:-41], ":82: 65 values, expected 78"),
        # Cut in the header.
        (lambda: _arff([_arff_row()])[:300], "malformed @attribute line '@attribute f12'"),
        (lambda: _arff([_arff_row()])[:301], "no @data section"),
        # Not an ARFF file at all (a binary archive, an HTML error page).
        (lambda: "\x89\x00\x13garbage\n<html>Not Found</html>\n", "no @data section"),
        # A label that is not 0 or 1.
        (lambda: _arff([_arff_row(), _arff_row((0, 2, 0, 0, 0, 0))]), "'happy-pleased'"),
        (lambda: _arff([]), "no data rows"),
        (lambda: _arff([_arff_row()]).replace("@attribute f3 numeric", "@attribute"), "@attribute"),
    ],
)
def test_a_damaged_emotions_file_names_itself_and_the_remedy(tmp_path, content, reason):
    path = tmp_path / "emotions.arff"
    path.write_text(content())
    with pytest.raises(ValueError) as info:
        emotions.load_data(tmp_path, download=False, cache_dir=tmp_path)
    assert reason in _assert_corrupt(info, path, emotions.FILES[0])


def test_read_arff_rejects_a_sparse_index_out_of_range(tmp_path):
    # Python's row[-1] would silently set the last attribute.
    path = tmp_path / "t.arff"
    path.write_text("@relation t\n@attribute a numeric\n@attribute b numeric\n@data\n{-1 5}\n")
    with pytest.raises(ValueError, match=r":5: cannot read the data row \(attribute index -1"):
        emotions.read_arff(str(path))
    path.write_text("@relation t\n@attribute a numeric\n@data\n{3 5}\n")
    with pytest.raises(ValueError, match="attribute index 3 out of range"):
        emotions.read_arff(str(path))


_REC_HEADER = "click,purchase,101,D508\n"


def _rec_tables(folder, test_table):
    (folder / "ali_ccp_train_sample.csv").write_text(_REC_HEADER + "1,0,3,0.5\n")
    (folder / "ali_ccp_val_sample.csv").write_text(_REC_HEADER + "0,0,1,0.1\n")
    path = folder / "ali_ccp_test_sample.csv"
    if isinstance(test_table, bytes):
        path.write_bytes(test_table)
    else:
        path.write_text(test_table)
    return path


@pytest.mark.parametrize(
    "table, reason",
    [
        (b"click,purchase,101,D508\n\xff\xfe\x00\x81,0,1", "UnicodeDecodeError"),
        ("", "the file is empty"),
        (_REC_HEADER, "no data rows"),
        (_REC_HEADER + "0,0,1,0.1\n1,1", "row 2 has 2 fields, expected 4"),
        (_REC_HEADER + "0,0,x,0.1\n", "non-numeric field"),
        # Ids that int32 would silently turn into 4 and -2**31.
        (_REC_HEADER + "0,0,4.5,0.1\n", "column '101', data row 1: 4.5 is not a non-negative"),
        (_REC_HEADER + "0,0,nan,0.1\n", "column '101', data row 1: nan"),
        (_REC_HEADER + "0,0,1,0.1\n0,0,-3,0.1\n", "data row 2: -3.0"),
        (_REC_HEADER + "0,0,1,0.1\n2,0,1,0.1\n", "label column 'click', data row 2: 2.0"),
    ],
)
def test_a_damaged_rec_sample_table_names_itself_its_checksum_and_the_remedy(
    tmp_path, table, reason
):
    path = _rec_tables(tmp_path, table)
    with pytest.raises(ValueError) as info:
        ali_ccp.load_data(tmp_path, download=False, cache_dir=tmp_path)
    assert reason in _assert_corrupt(info, path, ali_ccp.FILES[2])


def test_missing_rec_sample_labels_may_be_nan(tmp_path):
    _rec_tables(tmp_path, _REC_HEADER + "nan,0,4,0.2\n")
    _, _, (_, y) = ali_ccp.load_data(tmp_path, download=False, cache_dir=tmp_path)
    assert np.isnan(y["click"][0, 0]) and y["purchase"][0, 0] == 0


def test_read_numeric_csv_of_an_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="t.csv: the file is empty, expected a header row"):
        read_numeric_csv(str(path))


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("age", "abc", "column 'age', row 1: 'abc' is not a finite number"),
        ("capital_gains", "1e5x", "column 'capital_gains', row 1: '1e5x'"),
        ("weeks_worked_in_year", "nan", "column 'weeks_worked_in_year', row 1: 'nan'"),
        ("wage_per_hour", "inf", "'inf' is not a finite number"),
    ],
)
def test_a_census_number_column_with_garbage_names_the_file_column_and_value(
    tmp_path, field, value, reason
):
    _write(tmp_path, [_row(), _row(**{field: value})], [_row()])
    with pytest.raises(ValueError) as info:
        census_income.load_data(tmp_path, download=False, cache_dir=tmp_path)
    message = _assert_corrupt(info, tmp_path / "census-income.data.gz", census_income.FILES[0])
    assert reason in message


def test_a_census_garbage_value_in_the_test_file_names_the_test_file(tmp_path):
    _write(tmp_path, [_row(), _row()], [_row(), _row(age="3O")])
    with pytest.raises(ValueError) as info:
        census_income.load_data(tmp_path, download=False, cache_dir=tmp_path)
    message = _assert_corrupt(info, tmp_path / "census-income.test.gz", census_income.FILES[1])
    assert "column 'age', row 1: '3O'" in message


def test_an_unknown_census_income_label_is_not_read_as_a_negative(tmp_path):
    _write(tmp_path, [_row(), _row(income="5000O+.")], [_row()])
    with pytest.raises(ValueError) as info:
        census_income.load_data(tmp_path, download=False, cache_dir=tmp_path)
    message = _assert_corrupt(info, tmp_path / "census-income.data.gz", census_income.FILES[0])
    assert "column 'income', row 1: '5000O+.' is not one of" in message


def test_an_empty_census_file_is_a_corrupt_file(tmp_path):
    _write(tmp_path, [_row()], [_row()])
    with gzip.open(tmp_path / "census-income.test.gz", "wb"):
        pass
    with pytest.raises(ValueError) as info:
        census_income.load_data(tmp_path, download=False, cache_dir=tmp_path)
    assert "the file has no rows" in _assert_corrupt(
        info, tmp_path / "census-income.test.gz", census_income.FILES[1]
    )


@pytest.mark.parametrize("group", [True, 1.0])
def test_census_group_must_be_an_integer(tmp_path, group):
    with pytest.raises(
        ValueError, match=rf"`group`, expected one of \[1, 2\]. Received: group={group}"
    ):
        census_income.load_data(tmp_path, group=group, download=False, cache_dir=tmp_path)


LOADERS = {
    "emotions": emotions.load_data,
    "census_income": census_income.load_data,
    "multi_mnist": multi_mnist.load_data,
    "multi_fashion": multi_fashion.load_data,
    "qm9": qm9.load_data,
    "ali_ccp": ali_ccp.load_data,
    "aliexpress": aliexpress.load_data,
}


@pytest.mark.parametrize("name", sorted(LOADERS))
@pytest.mark.parametrize("batch_size", [0, -4, 2.5, "32", True, None])
def test_batch_size_is_checked_before_the_files_are_read(tmp_path, name, batch_size):
    # tmp_path holds no data files: without the up-front check this is a
    # FileNotFoundError (or, with files, an error only once as_dataset builds).
    with pytest.raises(
        ValueError,
        match=rf"`batch_size`, expected a positive integer. Received: batch_size={batch_size!r}$",
    ):
        LOADERS[name](tmp_path, batch_size=batch_size, download=False, cache_dir=tmp_path)


@pytest.mark.parametrize("right_offset", [-1, 9, 2.0])
def test_right_offset_is_checked_before_the_files_are_read(tmp_path, right_offset):
    with pytest.raises(ValueError, match=rf"Received: right_offset={right_offset!r}"):
        multi_mnist.load_data(tmp_path, right_offset=right_offset, download=False)


def _qm9_tables(folder, homo):
    paths = {f.name: os.path.join(folder, f.name) for f in qm9.FILES}
    columns = [c for c, _ in qm9.TARGETS.values()]
    with gzip.open(paths["qm9_targets.csv.gz"], "wt", compresslevel=0) as f:
        f.write("mol_id," + ",".join(columns) + "\n")
        f.write("1," + ",".join(homo if c == "homo_Ha" else "0.5" for c in columns) + "\n")
    with gzip.open(paths["qm9_geometry.csv.gz"], "wt") as f:
        f.write("mol_id,Elements,XYZ_Ang\n1,\"['H','H']\",\"[[0.0,0.0,0.0],[0.74,0.0,0.0]]\"\n")
    return paths


def test_the_qm9_cache_is_not_reused_for_a_changed_file_of_the_same_size(tmp_path):
    paths = _qm9_tables(tmp_path, "-0.1")
    assert qm9.parse(paths, cache_dir=tmp_path / "cache")["homo_Ha"].tolist() == [-0.1]
    before = os.stat(paths["qm9_targets.csv.gz"])
    _qm9_tables(tmp_path, "-0.3")  # the same number of bytes, another value
    # Another modification time, as an edit or a new copy of the file has.
    os.utime(paths["qm9_targets.csv.gz"], ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert os.stat(paths["qm9_targets.csv.gz"]).st_size == before.st_size
    assert qm9.parse(paths, cache_dir=tmp_path / "cache")["homo_Ha"].tolist() == [-0.3]
