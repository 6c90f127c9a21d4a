import csv
import gzip
import io
import os
import threading
import time
import warnings

import numpy as np
import pytest

from keras_mtl.datasets import qm9
from keras_mtl.datasets.data_files import locate_files
from tests.datasets.fit_helpers import fit_tiny

TARGET_HEADER = (
    "mol_id,smiles,n_atoms,n_H,n_C,n_N,n_O,n_F,A_GHz,B_GHz,C_GHz,mu_D,alpha_bohr3,homo_Ha,"
    "lumo_Ha,gap_Ha,r2_bohr2,zpve_Ha,U0_Ha,U_Ha,H_Ha,G_Ha,Cv_cal_molK,U0_atom_Ha,U_atom_Ha,"
    "H_atom_Ha,G_atom_Ha"
)
# Three molecules, deliberately not in mol_id order: HF (id 5), methane (id 1), water (id 3).
MOLECULES = {
    5: (["H", "F"], [[0.0, 0.0, 0.0], [0.92, 0.0, 0.0]]),
    1: (
        ["C", "H", "H", "H", "H"],
        [
            [0, 0, 0],
            [0.63, 0.63, 0.63],
            [-0.63, -0.63, 0.63],
            [-0.63, 0.63, -0.63],
            [0.63, -0.63, -0.63],
        ],
    ),
    3: (["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
}


def _write_tables(folder):
    os.makedirs(folder, exist_ok=True)
    targets, geometry = [TARGET_HEADER], ["mol_id,Elements,XYZ_Ang,Mulliken_pop"]
    for mol_id, (elements, xyz) in MOLECULES.items():
        values = [mol_id + 0.5] * 25  # every numeric column: id + 0.5
        targets.append(f"{mol_id},X," + ",".join(str(v) for v in values))
        el = "[" + ",".join(f"'{e}'" for e in elements) + "]"
        pos = "[" + ",".join("[" + ",".join(repr(float(c)) for c in p) + "]" for p in xyz) + "]"
        charges = "[" + ",".join("0.0" for _ in elements) + "]"
        geometry.append(f'{mol_id},"{el}","{pos}","{charges}"')
    for name, lines in (("qm9_targets.csv.gz", targets), ("qm9_geometry.csv.gz", geometry)):
        with gzip.open(folder / name, "wt") as f:
            f.write("\n".join(lines) + "\n")
    np.save(folder / "libmtl_qm9_random_split.npy", np.array([2, 0, 1]))


def test_parse_on_tiny_tables(tmp_path):
    _write_tables(tmp_path / "qm9")
    paths = locate_files("qm9", qm9.FILES, data_dir=tmp_path, download=False)
    data = qm9.parse(paths, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(data["mol_id"], [1, 3, 5])
    np.testing.assert_array_equal(data["homo_Ha"], [1.5, 3.5, 5.5])
    # Types: 1..5 = H, C, N, O, F, 0 = padding.
    np.testing.assert_array_equal(data["types"][0, :6], [2, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(data["types"][2, :3], [1, 5, 0])
    np.testing.assert_allclose(data["positions"][1, 2], [-0.24, 0.93, 0.0], rtol=1e-6)
    assert data["types"].shape == (3, 29) and data["positions"].shape == (3, 29, 3)
    # Bonds: methane 4 C-H, water 2 O-H (H...H 1.5 A apart is not a bond), HF one.
    adj = data["adjacency"]
    assert (adj == adj.transpose(0, 2, 1)).all()
    assert adj[0].sum() == 8 and adj[1].sum() == 4 and adj[2].sum() == 2
    names = qm9.DESCRIPTOR_NAMES
    d = dict(zip(names, data["descriptors"][0], strict=True))
    assert (d["n_H"], d["n_C"], d["n_atoms"], d["bonds_HC"], d["bonds_CC"]) == (4, 1, 5, 4, 0)
    d = dict(zip(names, data["descriptors"][1], strict=True))
    assert (d["n_O"], d["bonds_HO"], d["bonds_HH"]) == (1, 2, 0)
    # HF: the 2 x 2 Coulomb matrix [[0.5, 9/r], [9/r, 0.5 * 9^2.4]] (r in bohr).
    d = dict(zip(names, data["descriptors"][2], strict=True))
    r = 0.92 / 0.529177
    a, b, c = 0.5, 9.0 / r, 0.5 * 9**2.4
    root = np.sqrt(((a - c) / 2) ** 2 + b * b)
    np.testing.assert_allclose(
        [d["coulomb_eig_0"], d["coulomb_eig_1"], d["coulomb_eig_2"]],
        [(a + c) / 2 + root, (a + c) / 2 - root, 0.0],
        rtol=1e-5,
    )
    # Two points 0.92 apart: radius of gyration 0.46, gyration eigenvalues (0.46^2, 0, 0).
    np.testing.assert_allclose(
        [d["radius_of_gyration"], d["gyration_eig_0"], d["gyration_eig_1"]],
        [0.46, 0.46**2, 0.0],
        atol=1e-6,
    )
    # The cache is written and read back identically.
    cached = qm9.parse(paths, cache_dir=tmp_path / "cache")
    for key, value in data.items():
        np.testing.assert_array_equal(cached[key], value)


def test_argument_and_file_errors(tmp_path):
    _write_tables(tmp_path)
    kw = dict(download=False, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="features='atoms'"):
        qm9.load_data(tmp_path, features="atoms", **kw)
    with pytest.raises(ValueError, match="targets=\\['gap'\\]"):
        qm9.load_data(tmp_path, targets=["gap"], **kw)
    with pytest.raises(ValueError, match="num_train=0"):
        qm9.load_data(tmp_path, num_train=0, **kw)
    with pytest.raises(ValueError, match="num_train=2.0"):
        qm9.load_data(tmp_path, num_train=2.0, **kw)
    np.save(tmp_path / "libmtl_qm9_random_split.npy", np.array([0, 1]))
    with pytest.raises(ValueError, match="permutation of 0..2"):
        qm9.load_data(tmp_path, **kw)


@pytest.fixture(scope="module")
def qm9_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("qm9_cache")


@pytest.fixture(scope="module")
def loaded(data_dir, qm9_cache):
    return qm9.load_data(data_dir, cache_dir=qm9_cache, return_info=True)


@pytest.fixture(scope="module")
def raw_targets(data_dir):
    """The targets table read independently with the csv module, in file order."""
    path = os.path.join(data_dir, "qm9", "qm9_targets.csv.gz")
    with gzip.open(path, "rt") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    return rows


def test_row_count_and_libmtl_split_sizes(loaded, data_dir):
    (x, y), (xv, yv), (xt, yt), info = loaded
    assert len(x) + len(xv) + len(xt) == 130_831
    assert (len(x), len(xv), len(xt)) == (110_831, 10_000, 10_000)
    ids = np.concatenate([info["train_mol_id"], info["val_mol_id"], info["test_mol_id"]])
    assert len(np.unique(ids)) == 130_831
    perm = np.load(os.path.join(data_dir, "qm9", "libmtl_qm9_random_split.npy"))
    all_ids = np.sort(ids)
    np.testing.assert_array_equal(info["test_mol_id"], all_ids[perm[:10000]])
    assert x.shape == (110_831, len(qm9.DESCRIPTOR_NAMES)) and np.isfinite(x).all()
    # Descriptors standardised with training statistics only: exactly zero mean and
    # unit std on the training split for every non-constant column.
    z = x.astype("float64")
    varying = z.std(0) > 0
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0)[varying], 1.0, atol=1e-4)
    assert set(y) == set(qm9.TARGETS) and len(y) == 11


def test_targets_are_in_ev_and_standardised_with_training_statistics(loaded, raw_targets):
    (_, y), _, (_, yt), info = loaded
    for task in qm9.TARGETS:
        np.testing.assert_allclose(y[task].mean(), 0.0, atol=1e-4)
        np.testing.assert_allclose(y[task].std(), 1.0, atol=1e-4)
    by_id = {int(r["mol_id"]): r for r in raw_targets}
    test_rows = [by_id[int(i)] for i in info["test_mol_id"][:200]]
    # Every one of the 11 tasks against its own column of the file; the energies
    # (Hartree in the file) in eV.
    for task, column, factor in (
        ("mu", "mu_D", 1.0),
        ("alpha", "alpha_bohr3", 1.0),
        ("homo", "homo_Ha", 27.2114),
        ("lumo", "lumo_Ha", 27.2114),
        ("r2", "r2_bohr2", 1.0),
        ("zpve", "zpve_Ha", 27.2114),
        ("U0_atom", "U0_atom_Ha", 27.2114),
        ("U_atom", "U_atom_Ha", 27.2114),
        ("H_atom", "H_atom_Ha", 27.2114),
        ("G_atom", "G_atom_Ha", 27.2114),
        ("Cv", "Cv_cal_molK", 1.0),
    ):
        expected = np.array([float(r[column]) * factor for r in test_rows])
        got = yt[task][:200, 0] * info["std"][task] + info["mean"][task]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert info["units"]["homo"] == "eV" and info["units"]["alpha"] == "bohr^3"
    # HOMO energies of these organic molecules are a few eV below zero.
    assert -7.5 < info["mean"]["homo"] < -5.5


def test_descriptor_counts_match_the_table_and_graph_form(loaded, data_dir, qm9_cache, raw_targets):
    paths = locate_files("qm9", qm9.FILES, data_dir=data_dir, download=False)
    data = qm9.parse(paths, cache_dir=qm9_cache)  # read from the cache the fixture wrote
    assert os.listdir(os.path.join(qm9_cache, "qm9"))
    names = list(qm9.DESCRIPTOR_NAMES)
    for element in qm9.ELEMENTS:
        expected = np.array([int(r[f"n_{element}"]) for r in raw_targets])
        np.testing.assert_array_equal(data["descriptors"][:, names.index(f"n_{element}")], expected)
    # Every hydrogen has exactly one bond.
    degree = data["adjacency"].sum(-1)
    assert (degree[data["types"] == 1] == 1).all()

    (g, y), _, _, info = qm9.load_data(
        data_dir,
        features="graph",
        targets=["homo", "lumo"],
        cache_dir=qm9_cache,
        return_info=True,
    )
    assert set(y) == {"homo", "lumo"}
    assert g["atom_types"].shape == (110_831, 29) and g["positions"].shape == (110_831, 29, 3)
    assert g["adjacency"].shape == (110_831, 29, 29) and g["mask"].dtype == np.float32
    n_atoms = {int(r["mol_id"]): int(r["n_atoms"]) for r in raw_targets}
    expected = np.array([n_atoms[int(i)] for i in info["train_mol_id"]])
    np.testing.assert_array_equal(g["mask"].sum(1).astype(int), expected)
    np.testing.assert_array_equal(g["mask"] > 0, g["atom_types"] > 0)


def test_qm9_descriptor_slice_trains_end_to_end(loaded):
    (x, y), _, _, _ = loaded
    tasks = ["mu", "homo", "U0_atom"]
    history = fit_tiny(x[:512], {t: y[t][:512] for t in tasks}, {t: "mse" for t in tasks})
    assert {"mu_loss", "homo_loss", "U0_atom_loss"} <= set(history)


def test_reduced_training_split_keeps_statistics_and_evaluation_splits(loaded, data_dir, qm9_cache):
    (x, y), (xv, yv), _, info = loaded
    (xs, ys), (xvs, yvs), _, info_s = qm9.load_data(
        data_dir, num_train=1000, cache_dir=qm9_cache, return_info=True
    )
    assert len(xs) == 1000
    np.testing.assert_array_equal(info_s["train_mol_id"], info["train_mol_id"][:1000])
    np.testing.assert_array_equal(xs, x[:1000])
    np.testing.assert_array_equal(yvs["homo"], yv["homo"])
    assert info_s["std"] == info["std"]


def _pair(elements, distance):
    """Two atoms `distance` Angstrom apart along x, padded to 29."""
    types = np.zeros((1, qm9.MAX_ATOMS), "int8")
    types[0, :2] = [qm9.ELEMENTS.index(e) + 1 for e in elements]
    positions = np.zeros((1, qm9.MAX_ATOMS, 3), "float32")
    positions[0, 1, 0] = distance
    return types, positions


def test_a_bond_between_two_atoms_of_one_element_counts_once():
    # H2 (0.74 A) and a C-C single bond (1.54 A): one bond each, although the
    # adjacency lists it as (0, 1) and (1, 0).
    names = list(qm9.DESCRIPTOR_NAMES)
    for elements, distance, column in (
        (("H", "H"), 0.74, "bonds_HH"),
        (("C", "C"), 1.54, "bonds_CC"),
    ):
        types, positions = _pair(elements, distance)
        adjacency = qm9.bond_adjacency(types, positions)
        d = qm9.descriptors(types, positions, adjacency)[0]
        assert d[names.index(column)] == 1
        assert d[[names.index(n) for n in names if n.startswith("bonds_")]].sum() == 1


def test_bond_cutoff_is_the_sum_of_covalent_radii_plus_0_4():
    # C (0.76 A) and H (0.31 A): bonded below 0.76 + 0.31 + 0.4 = 1.47 A, not above.
    for distance, bonded in ((1.46, 1), (1.48, 0)):
        types, positions = _pair(("C", "H"), distance)
        assert qm9.bond_adjacency(types, positions)[0, 0, 1] == bonded


def test_coulomb_eigenvalues_are_sorted_by_magnitude():
    # H2, 0.74 A = r bohr apart: Coulomb matrix [[0.5, 1/r], [1/r, 0.5]] with
    # eigenvalues 0.5 + 1/r > 0 > 0.5 - 1/r. By magnitude the negative one comes
    # second, before the 27 zeros of the padding (by value it would come last).
    types, positions = _pair(("H", "H"), 0.74)
    d = qm9.descriptors(types, positions, qm9.bond_adjacency(types, positions))[0]
    names = list(qm9.DESCRIPTOR_NAMES)
    eig = d[[names.index(f"coulomb_eig_{i}") for i in range(qm9.MAX_ATOMS)]]
    r = 0.74 / 0.529177
    np.testing.assert_allclose(eig[:2], [0.5 + 1 / r, 0.5 - 1 / r], rtol=1e-5)
    np.testing.assert_array_equal(eig[2:], 0.0)


def test_only_the_training_dataset_is_shuffled(loaded, data_dir, qm9_cache):
    # Validation and test datasets keep the order of the numpy splits (and of
    # info["test_mol_id"]); the training dataset is shuffled.
    (_, y), (_, yv), (_, yt), _ = loaded
    train_ds, val_ds, test_ds = qm9.load_data(
        data_dir, targets=["homo"], as_dataset=True, batch_size=1000, cache_dir=qm9_cache
    )
    for ds, expected in ((val_ds, yv), (test_ds, yt)):
        got = np.concatenate([by["homo"].numpy() for _, by in ds])
        np.testing.assert_array_equal(got, expected["homo"])
    _, first = next(iter(train_ds))
    assert not np.array_equal(first["homo"].numpy(), y["homo"][:1000])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_truncated_table_or_split_file_names_itself_and_the_remedy(tmp_path, index):
    _write_tables(tmp_path)
    data_file = qm9.FILES[index]
    path = tmp_path / data_file.name
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as info:
        qm9.load_data(tmp_path, download=False, cache_dir=tmp_path / "cache", use_cache=False)
    message = str(info.value)
    assert repr(str(path)) in message and "truncated or corrupt" in message
    # No official download: the remedy is to replace it, from where the note says.
    assert message.endswith(f"replace it ({data_file.note}).")
    assert isinstance(info.value.__cause__, EOFError if index < 2 else ValueError)


def test_a_geometry_row_cut_short_is_reported_as_corrupt(tmp_path):
    _write_tables(tmp_path)
    path = tmp_path / "qm9_geometry.csv.gz"
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    # A well-formed gzip of a table whose last row lost its coordinates.
    lines[-1] = lines[-1].split('"')[0] + '"' + lines[-1].split('"')[1]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError, match=r"qm9_geometry\.csv\.gz.*truncated or corrupt \(IndexError"
    ):
        qm9.parse({f.name: str(tmp_path / f.name) for f in qm9.FILES}, use_cache=False)


def test_stale_parse_caches_are_pruned_and_the_last_used_ones_kept(tmp_path):
    _write_tables(tmp_path)
    paths = {f.name: str(tmp_path / f.name) for f in qm9.FILES}
    folder = tmp_path / "cache" / "qm9"

    def parse_at(mtime):
        # Another modification time of the tables names another cache.
        for path in paths.values():
            os.utime(path, ns=(mtime, mtime))
        qm9.parse(paths, cache_dir=tmp_path / "cache")
        return qm9._cache_path(tmp_path / "cache", paths)

    first = parse_at(10**18)
    second = parse_at(10**18 + 10**9)
    for name in os.listdir(folder):
        # Written long ago: without the refresh on reading, `first` would be pruned next.
        os.utime(folder / name, (1, 1))
    assert parse_at(10**18) == first  # read from the cache, which marks it used
    others = [parse_at(10**18 + i * 10**9) for i in (2, 3)]
    kept = sorted(os.listdir(folder))
    # Four caches were written; the least recently used one, `second`, is gone.
    assert kept == sorted(os.path.basename(p) for p in [first, *others])
    assert os.path.basename(second) not in kept


def _stale_caches(folder, count):
    """`count` parse caches of other tables, the oldest first."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"qm9_parsed_v1_1_2_{i:012d}.npz" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(b"")
        os.utime(path, (i + 1, i + 1))
    return paths


def test_pruning_passes_over_caches_another_process_removes_meanwhile(tmp_path, monkeypatch):
    # Two processes writing caches to one folder prune it at the same time:
    # a cache listed by one may be gone before it reads its time or removes
    # it. That ended the pruning with "Could not write the QM9 cache" (an
    # error under `-W error`) although the cache was written.
    _write_tables(tmp_path)
    paths = {f.name: str(tmp_path / f.name) for f in qm9.FILES}
    folder = tmp_path / "cache" / "qm9"
    stale = _stale_caches(folder, 4)
    listdir, getmtime = os.listdir, os.path.getmtime

    def listed(path):  # and one more, removed by the other process right away
        names = listdir(path)
        return [*names, "qm9_parsed_v1_1_2_removed.npz"] if path == str(folder) else names

    def read_then_removed(path):  # the oldest one is removed after its time is read
        time = getmtime(path)
        if path == str(stale[0]):
            os.remove(path)
        return time

    monkeypatch.setattr(os, "listdir", listed)
    monkeypatch.setattr(os.path, "getmtime", read_then_removed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = qm9.parse(paths, cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    assert data["mol_id"].tolist() == [1, 3, 5]
    written = os.path.basename(qm9._cache_path(tmp_path / "cache", paths))
    assert sorted(os.listdir(folder)) == sorted([written, stale[3].name, stale[2].name])


def test_a_cache_pruned_by_another_process_before_it_is_read_is_parsed_anew(tmp_path, monkeypatch):
    # Found by `isfile`, removed before `np.load`: a cache miss, not an
    # "unreadable" cache.
    _write_tables(tmp_path)
    paths = {f.name: str(tmp_path / f.name) for f in qm9.FILES}
    expected = qm9.parse(paths, cache_dir=tmp_path / "cache")
    cache = qm9._cache_path(tmp_path / "cache", paths)
    load = np.load

    def removed_first(path, **kwargs):
        os.remove(path)
        return load(path, **kwargs)

    monkeypatch.setattr(qm9.np, "load", removed_first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = qm9.parse(paths, cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    np.testing.assert_array_equal(data["descriptors"], expected["descriptors"])
    assert os.path.isfile(cache)  # written again

    # A cache that cannot be marked used (a read-only one) is still read.
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "utime", refused)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = qm9.parse(paths, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(data["descriptors"], expected["descriptors"])


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch, failure):
    # Pruning passes over `.tmp.` files (another process may be writing
    # one): the partial file of a full disk or an interrupt stayed for good.
    _write_tables(tmp_path)
    paths = {f.name: str(tmp_path / f.name) for f in qm9.FILES}
    savez = np.savez

    def fails_halfway(file, **arrays):
        savez(file, **dict(list(arrays.items())[:2]))
        raise failure

    monkeypatch.setattr(qm9.np, "savez", fails_halfway)
    if isinstance(failure, OSError):
        with pytest.warns(UserWarning, match="Could not write the QM9 cache"):
            data = qm9.parse(paths, cache_dir=tmp_path / "cache")
        assert data["mol_id"].tolist() == [1, 3, 5]
    else:
        with pytest.raises(KeyboardInterrupt):
            qm9.parse(paths, cache_dir=tmp_path / "cache")
    assert os.listdir(tmp_path / "cache" / "qm9") == []


@pytest.mark.parametrize("kept", [0, 0.5], ids=["empty", "half"])
def test_a_truncated_cache_is_ignored_with_a_warning(tmp_path, kept):
    # `np.load` raises `EOFError` or `zipfile.BadZipFile` there, which `parse`
    # let through.
    _write_tables(tmp_path)
    paths = {f.name: str(tmp_path / f.name) for f in qm9.FILES}
    expected = qm9.parse(paths, cache_dir=tmp_path / "cache")
    cache = qm9._cache_path(tmp_path / "cache", paths)
    with open(cache, "rb") as f:
        raw = f.read()
    with open(cache, "wb") as f:
        f.write(raw[: int(len(raw) * kept)])
    with pytest.warns(UserWarning, match="Ignoring the unreadable QM9 cache"):
        data = qm9.parse(paths, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(data["descriptors"], expected["descriptors"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qm9.parse(paths, cache_dir=tmp_path / "cache")  # written anew


def test_two_writers_of_one_cache_do_not_share_a_temporary_file(tmp_path, monkeypatch):
    # Both wrote `<cache>.tmp.npz`: one installed the file while the other
    # was still writing it (read as a truncated zip), or found it gone
    # ("Could not write the QM9 cache"). Here the other writer (a thread)
    # writes and installs its cache between this one's write and install.
    _write_tables(tmp_path)
    paths = {f.name: str(tmp_path / f.name) for f in qm9.FILES}
    cache_dir = tmp_path / "cache"
    savez, errors = np.savez, []

    def other_writer():
        try:
            qm9.parse(paths, cache_dir=cache_dir)
        except Exception as e:  # raised in the test's thread below
            errors.append(e)

    def savez_then_the_other_writer(file, **arrays):
        savez(file, **arrays)
        if threading.current_thread() is threading.main_thread():
            thread = threading.Thread(target=other_writer)
            thread.start()
            thread.join()

    monkeypatch.setattr(qm9.np, "savez", savez_then_the_other_writer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qm9.parse(paths, cache_dir=cache_dir)
    assert errors == []
    assert os.listdir(cache_dir / "qm9") == [os.path.basename(qm9._cache_path(cache_dir, paths))]


def test_a_killed_writers_temporary_file_is_removed_once_abandoned(tmp_path):
    # A writer killed with SIGKILL leaves its `.tmp.` file: the next pruning
    # removes it once it is a day old, and leaves a fresh one (being written).
    _write_tables(tmp_path)
    paths = {f.name: str(tmp_path / f.name) for f in qm9.FILES}
    folder = tmp_path / "cache" / "qm9"
    folder.mkdir(parents=True)
    abandoned = folder / "qm9_parsed_v1_1_2_000000000000.npz.77-1.tmp.npz"
    fresh = folder / "qm9_parsed_v1_1_2_000000000000.npz.78-1.tmp.npz"
    for path in (abandoned, fresh):
        path.write_bytes(b"partial")
    day_old = time.time() - qm9._ABANDONED_AFTER_S - 60
    os.utime(abandoned, (day_old, day_old))
    qm9.parse(paths, cache_dir=tmp_path / "cache")
    written = os.path.basename(qm9._cache_path(tmp_path / "cache", paths))
    assert sorted(os.listdir(folder)) == sorted([written, fresh.name])
