"""Loader edge cases: malformed tables, wrong names, cache-folder races."""

import gzip
import os
import re
import warnings

import numpy as np
import pytest

from keras_mtl.datasets import ali_ccp, emotions, multi_mnist, qm9
from tests.datasets.test_damaged_files_and_arguments import LABELS, _assert_corrupt
from tests.datasets.test_qm9 import _write_tables

# ---------------------------------------------------------------- emotions


def _emotions_file(num_features):
    lines = ["@relation emotions"]
    lines += [f"@attribute f{i} numeric" for i in range(num_features)]
    lines += [f"@attribute {name} {{0,1}}" for name in LABELS]
    lines += ["@data", ",".join(["0.5"] * num_features + ["1", "0", "0", "0", "0", "1"])]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("num_features", [71, 73])
def test_an_emotions_file_with_another_number_of_attributes_is_corrupt(tmp_path, num_features):
    # Well-formed ARFF, but not the 72 features + 6 labels of emotions.arff:
    # read as is, a label column would be taken for a feature or the reverse.
    path = tmp_path / "emotions.arff"
    path.write_text(_emotions_file(num_features))
    with pytest.raises(ValueError) as info:
        emotions.load_data(tmp_path, download=False, cache_dir=tmp_path)
    message = _assert_corrupt(info, path, emotions.FILES[0])
    assert f"(ValueError: expected 78 attributes, found {num_features + 6})" in message


# ---------------------------------------------------------------- multi_mnist


@pytest.mark.parametrize("name", ["kmnist", "MNIST", "fashion_mnist"])
def test_load_source_names_an_unknown_source_before_looking_for_files(tmp_path, name):
    # The folder does not exist: a FileNotFoundError would mean files were looked for first.
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Received an invalid value for `name`, expected 'mnist' or 'fashion'. "
            f"Received: name={name!r}"
        ),
    ):
        multi_mnist.load_source(name, tmp_path / "missing", download=False, cache_dir=tmp_path)


# ---------------------------------------------------------------- rec_samples


def test_rec_sample_tables_without_a_label_column_name_it_and_the_columns_found(tmp_path):
    # The three tables agree on their columns, but none has `purchase`.
    for split in ("train", "val", "test"):
        (tmp_path / f"ali_ccp_{split}_sample.csv").write_text("click,101,D508\n1,3,0.5\n")
    message = (
        "ali_ccp_train_sample.csv: missing label columns ['purchase']; "
        "its columns are ['click', '101', 'D508']."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ali_ccp.load_data(tmp_path, download=False, cache_dir=tmp_path)


# ---------------------------------------------------------------- qm9 tables


def _paths(folder):
    return {f.name: str(folder / f.name) for f in qm9.FILES}


def _edit_table(path, edit):
    """Rewrites the gzipped table `path` as `edit(lines)` returns it."""
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    with gzip.open(path, "wt") as f:
        f.write("\n".join(edit(lines)) + "\n")


def _geometry_row(mol_id, elements, xyz):
    el = "[" + ",".join(f"'{e}'" for e in elements) + "]"
    pos = "[" + ",".join("[" + ",".join(repr(float(c)) for c in p) + "]" for p in xyz) + "]"
    charges = "[" + ",".join("0.0" for _ in elements) + "]"
    return f'{mol_id},"{el}","{pos}","{charges}"'


def _parse_error(folder, name):
    """The corrupt-file error of `qm9.parse` on the tables in `folder`; checks it names `name`."""
    with pytest.raises(ValueError) as info:
        qm9.parse(_paths(folder), use_cache=False)
    data_file = next(f for f in qm9.FILES if f.name == name)
    return _assert_corrupt(info, folder / name, data_file)


def test_a_targets_table_without_a_target_column_names_the_column(tmp_path):
    _write_tables(tmp_path)
    _edit_table(
        tmp_path / "qm9_targets.csv.gz",
        lambda lines: [lines[0].replace("Cv_cal_molK", "Cv"), *lines[1:]],
    )
    message = _parse_error(tmp_path, "qm9_targets.csv.gz")
    assert "(ValueError: missing columns ['Cv_cal_molK']; header is ['mol_id', 'smiles'," in message


def test_a_geometry_table_with_another_header_is_corrupt(tmp_path):
    # Same rows, another header: not the qm9pack table whose columns the parser assumes.
    _write_tables(tmp_path)
    header = "id,Elements,XYZ_Ang,Mulliken_pop"
    _edit_table(tmp_path / "qm9_geometry.csv.gz", lambda lines: [header, *lines[1:]])
    message = _parse_error(tmp_path, "qm9_geometry.csv.gz")
    assert f"(ValueError: unexpected header {header!r})" in message


def test_a_geometry_table_with_an_element_outside_hcnof_names_it(tmp_path):
    _write_tables(tmp_path)
    # HF (id 5) becomes HCl, and water's O becomes S.
    _edit_table(
        tmp_path / "qm9_geometry.csv.gz",
        lambda lines: [line.replace("'F'", "'Cl'").replace("'O'", "'S'") for line in lines],
    )
    message = _parse_error(tmp_path, "qm9_geometry.csv.gz")
    assert "(ValueError: unexpected elements ['Cl', 'S'])" in message


@pytest.mark.parametrize(
    "row",
    [
        # HF with one position for its two atoms.
        _geometry_row(5, ["H", "F"], [[0.0, 0.0, 0.0]]),
        # HF with a third position.
        _geometry_row(5, ["H", "F"], [[0.0, 0.0, 0.0], [0.92, 0.0, 0.0], [1.0, 1.0, 1.0]]),
        # 30 atoms, one more than the 29 of QM9's largest molecule, positions matching.
        _geometry_row(5, ["C"] * 30, [[1.5 * i, 0.0, 0.0] for i in range(30)]),
    ],
    ids=["missing_position", "extra_position", "30_atoms"],
)
def test_geometry_rows_whose_positions_do_not_fit_the_elements_are_corrupt(tmp_path, row):
    _write_tables(tmp_path)
    _edit_table(
        tmp_path / "qm9_geometry.csv.gz",
        lambda lines: [row if line.startswith("5,") else line for line in lines],
    )
    message = _parse_error(tmp_path, "qm9_geometry.csv.gz")
    assert "(ValueError: coordinates do not match the element lists)" in message


def test_tables_of_different_molecules_name_the_ids_only_in_each(tmp_path):
    _write_tables(tmp_path)
    # Water (id 3) is missing from the geometry table, and a molecule 7 is only there.
    _edit_table(
        tmp_path / "qm9_geometry.csv.gz",
        lambda lines: [
            *[line for line in lines if not line.startswith("3,")],
            _geometry_row(7, ["H", "H"], [[0.0, 0.0, 0.0], [0.74, 0.0, 0.0]]),
        ],
    )
    message = (
        "qm9_targets.csv.gz and qm9_geometry.csv.gz list different molecules (3 and 3 rows); "
        "mol_id only in qm9_targets.csv.gz: [3], only in qm9_geometry.csv.gz: [7]."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        qm9.parse(_paths(tmp_path), use_cache=False)
    # One row fewer in the geometry table.
    _write_tables(tmp_path)
    _edit_table(
        tmp_path / "qm9_geometry.csv.gz",
        lambda lines: [line for line in lines if not line.startswith("3,")],
    )
    with pytest.raises(
        ValueError, match=r"different molecules \(3 and 2 rows\).*: \[3\], .*: \[\]\.$"
    ):
        qm9.parse(_paths(tmp_path), use_cache=False)


def test_tables_listing_the_same_molecules_in_another_order_are_matched_by_id(tmp_path):
    # Bug: the rows were paired by position and any other order of the
    # geometry table was refused as "different molecules".
    _write_tables(tmp_path / "same")
    expected = qm9.parse(_paths(tmp_path / "same"), use_cache=False)
    _write_tables(tmp_path / "other")
    # Geometry rows in the order 1, 3, 5 while the targets list 5, 1, 3.
    _edit_table(
        tmp_path / "other" / "qm9_geometry.csv.gz",
        lambda lines: [lines[0], *sorted(lines[1:], key=lambda line: int(line.split(",")[0]))],
    )
    data = qm9.parse(_paths(tmp_path / "other"), use_cache=False)
    assert data.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(data[key], value, err_msg=key)
    # Each molecule has its own geometry: HF (id 5) is the last row, one H and one F.
    assert data["mol_id"].tolist() == [1, 3, 5]
    assert data["types"][2, :3].tolist() == [1, 5, 0] and data["homo_Ha"][2] == 5.5


# ---------------------------------------------------------------- qm9 cache folder


def test_a_cache_folder_that_cannot_be_listed_is_not_pruned_and_the_cache_is_kept(
    tmp_path, monkeypatch
):
    # Pruning is best effort: a folder that cannot be listed (removed or made
    # unreadable by another process) must not fail the parse after the cache is written.
    _write_tables(tmp_path)
    folder = str(tmp_path / "cache" / "qm9")
    listdir = os.listdir
    listed = []

    def refused(path):
        if os.fspath(path) == folder:
            listed.append(path)
            raise PermissionError(13, "Permission denied", path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refused)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = qm9.parse(_paths(tmp_path), cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    assert listed == [folder]  # pruning was tried
    assert data["mol_id"].tolist() == [1, 3, 5]
    assert os.path.isfile(qm9._cache_path(tmp_path / "cache", _paths(tmp_path)))
    # A folder that is gone: nothing to prune, nothing raised.
    assert qm9._prune_caches(str(tmp_path / "gone"), keep=3) is None


def test_pruning_leaves_the_other_files_of_the_cache_folder_alone(tmp_path):
    # The parse caches share `<cache>/qm9` with the downloaded tables
    # (`locate_files` puts them there): only `qm9_parsed_v*.npz` files are pruned.
    folder = tmp_path / "cache" / "qm9"
    _write_tables(folder)  # the tables, as a download leaves them
    others = [
        "notes.txt",
        "qm9_parsed_v1_notes.txt",  # the prefix of a cache, not its suffix
        "other.npz",  # the suffix, not the prefix
    ]
    for name in others:
        (folder / name).write_text("keep me")
    stale = []
    for i in range(4):
        stale.append(folder / f"qm9_parsed_v1_1_2_{i:012d}.npz")
        stale[-1].write_bytes(b"")
    # Everything but the new cache is older than the stale caches.
    for i, path in enumerate(stale):
        os.utime(path, (100 + i, 100 + i))
    kept = [f.name for f in qm9.FILES] + others
    for name in kept:
        os.utime(folder / name, (1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qm9.parse(_paths(folder), cache_dir=tmp_path / "cache")
    written = os.path.basename(qm9._cache_path(tmp_path / "cache", _paths(folder)))
    # The new cache and the two most recent stale ones stay, with every other file.
    assert sorted(os.listdir(folder)) == sorted([written, stale[3].name, stale[2].name, *kept])
    for name in others:
        assert (folder / name).read_text() == "keep me"
