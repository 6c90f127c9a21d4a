"""QM9: 11 quantum-chemical regression targets of 130,831 small organic molecules."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import warnings
import zipfile

import numpy as np

from keras_mtl._validation import check_positive_int
from keras_mtl.datasets.data_files import (
    DataFile,
    cache_root,
    gunzip,
    locate_files,
    reading,
    to_tf_dataset,
)

SUBDIR = "qm9"
_NOTE = (
    "derived from the QM9 tables of the qm9pack package (https://github.com/raghurama123/qm9pack, "
    "MIT); see the data README of this project for the format"
)
FILES = (
    DataFile("qm9_targets.csv.gz", note=_NOTE),
    DataFile("qm9_geometry.csv.gz", note=_NOTE),
    DataFile(
        "libmtl_qm9_random_split.npy",
        note="LibMTL's examples/qm9/random_split.t saved as a numpy permutation of 0..130830",
    ),
)
NUM_MOLECULES = 130831
MAX_ATOMS = 29
ELEMENTS = ("H", "C", "N", "O", "F")
ATOMIC_NUMBERS = (1, 6, 7, 8, 9)
# Covalent radii in Angstrom (Cordero et al., Dalton Trans. 2008).
COVALENT_RADII = (0.31, 0.76, 0.71, 0.66, 0.57)
# Two atoms are bonded when closer than the sum of their radii plus this slack.
BOND_TOLERANCE = 0.4
HARTREE_TO_EV = 27.2114
BOHR_PER_ANGSTROM = 1.0 / 0.529177

# The standard 11-task setting (LibMTL / Nash-MTL / DB-MTL): task -> (csv column, is an energy).
TARGETS = {
    "mu": ("mu_D", False),
    "alpha": ("alpha_bohr3", False),
    "homo": ("homo_Ha", True),
    "lumo": ("lumo_Ha", True),
    "r2": ("r2_bohr2", False),
    "zpve": ("zpve_Ha", True),
    "U0_atom": ("U0_atom_Ha", True),
    "U_atom": ("U_atom_Ha", True),
    "H_atom": ("H_atom_Ha", True),
    "G_atom": ("G_atom_Ha", True),
    "Cv": ("Cv_cal_molK", False),
}
UNITS = {
    "mu": "D",
    "alpha": "bohr^3",
    "r2": "bohr^2",
    "Cv": "cal/(mol K)",
    **{t: "eV" for t, (_, energy) in TARGETS.items() if energy},
}
_PAIRS = tuple((a, b) for a in range(5) for b in range(a, 5))
DESCRIPTOR_NAMES = (
    tuple(f"n_{e}" for e in ELEMENTS)
    + ("n_atoms",)
    + tuple(f"bonds_{ELEMENTS[a]}{ELEMENTS[b]}" for a, b in _PAIRS)
    + tuple(f"coulomb_eig_{i}" for i in range(MAX_ATOMS))
    + ("radius_of_gyration", "gyration_eig_0", "gyration_eig_1", "gyration_eig_2")
)
_CACHE_VERSION = 1
# Parse caches kept in the cache folder: each is named by its tables' sizes and
# modification times, so a table edited or copied anew leaves the old one behind.
_CACHES_KEPT = 3
# A temporary cache file untouched this long belongs to a killed writer.
_ABANDONED_AFTER_S = 24 * 3600


def _parse_targets(path: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    data_file = FILES[0]
    raw = gunzip(path, data_file)
    with reading(path, data_file):
        lines = raw.decode().splitlines()
        header = lines[0].split(",")
        needed = [c for c, _ in TARGETS.values()]
        missing = [c for c in needed + ["mol_id"] if c not in header]
        if missing:
            raise ValueError(f"missing columns {missing}; header is {header}")
        rows = [line.split(",") for line in lines[1:] if line]
        cols = list(zip(*rows, strict=True))
        mol_id = np.asarray(cols[header.index("mol_id")], dtype="int64")
        return mol_id, {c: np.asarray(cols[header.index(c)], dtype="float64") for c in needed}


def _parse_geometry(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns mol ids, padded element indices (0 = none, 1..5) and padded positions (Angstrom)."""
    data_file = FILES[1]
    raw = gunzip(path, data_file)
    with reading(path, data_file):
        return _geometry_arrays(raw.decode().splitlines())


def _geometry_arrays(lines: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not lines[0].startswith("mol_id,Elements,XYZ_Ang"):
        raise ValueError(f"unexpected header {lines[0]!r}")
    # A row is: id,"['C','H',...]","[[x,y,z],...]","[q,...]"; quotes split it into fields.
    parts = [line.split('"') for line in lines[1:] if line]
    mol_id = np.asarray([p[0].rstrip(",") for p in parts], dtype="int64")
    counts = np.asarray([p[1].count(",") + 1 for p in parts], dtype="int64")
    symbols = "".join(p[1] for p in parts).replace("[", "").replace("]", ",").replace("'", "")
    symbols = symbols.rstrip(",").split(",")
    lookup = {e: i + 1 for i, e in enumerate(ELEMENTS)}
    unknown = set(symbols) - set(lookup)
    if unknown:
        raise ValueError(f"unexpected elements {sorted(unknown)}")
    types_flat = np.fromiter(map(lookup.__getitem__, symbols), "int8", len(symbols))
    # One C-level parse of all coordinates is ~5x faster than float() per number.
    xyz_text = ",".join(p[3] for p in parts).replace("[", "").replace("]", "")
    xyz_flat = np.array(xyz_text.split(","), dtype="float64")
    if xyz_flat.size != 3 * counts.sum() or counts.max() > MAX_ATOMS:
        raise ValueError("coordinates do not match the element lists")
    n = len(parts)
    slot = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    row = np.repeat(np.arange(n), counts)
    types = np.zeros((n, MAX_ATOMS), dtype="int8")
    types[row, slot] = types_flat
    positions = np.zeros((n, MAX_ATOMS, 3), dtype="float32")
    positions[row, slot] = xyz_flat.reshape(-1, 3)
    return mol_id, types, positions


def bond_adjacency(types: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Bond graph from covalent radii: atoms closer than r_i + r_j + 0.4 Angstrom.

    Args:
        types: `(n, max_atoms)` element indices, 0 for padding, 1..5 for
            H, C, N, O, F.
        positions: `(n, max_atoms, 3)` coordinates in Angstrom.

    Returns:
        uint8 `(n, max_atoms, max_atoms)` symmetric adjacency without self
        loops; padding atoms have no bonds.

    Example:

    >>> types = np.array([[2, 1, 0]])  # C, H, padding
    >>> pos = np.array([[[0.0, 0, 0], [1.09, 0, 0], [0, 0, 0]]])
    >>> bond_adjacency(types, pos)[0].tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    """
    radii = np.concatenate([[0.0], COVALENT_RADII]).astype("float32")[types]
    real = types > 0
    out = np.zeros(types.shape + types.shape[-1:], dtype="uint8")
    off_diagonal = ~np.eye(types.shape[-1], dtype=bool)
    for start in range(0, len(types), 4096):
        sl = slice(start, start + 4096)
        dist2 = _squared_distances(positions[sl])
        limit = radii[sl, :, None] + radii[sl, None, :] + np.float32(BOND_TOLERANCE)
        bonded = (dist2 < limit * limit) & real[sl, :, None] & real[sl, None, :] & off_diagonal
        out[sl] = bonded
    return out


def _squared_distances(positions: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions, dtype="float32")
    diff = pos[:, :, None, :] - pos[:, None, :, :]
    return np.einsum("nijk,nijk->nij", diff, diff)


def descriptors(types: np.ndarray, positions: np.ndarray, adjacency: np.ndarray) -> np.ndarray:
    """Fixed-size composition and geometry descriptors for an MLP.

    Per molecule (`DESCRIPTOR_NAMES`): the number of atoms of each element
    and in total; the number of bonds of each element pair; the eigenvalues
    of the Coulomb matrix (Rupp et al. 2012, in atomic units) sorted by
    decreasing magnitude and zero-padded to 29; the radius of gyration and
    the sorted eigenvalues of the gyration tensor (Angstrom^2).

    Args:
        types: `(n, 29)` element indices (0 = padding).
        positions: `(n, 29, 3)` coordinates in Angstrom.
        adjacency: `(n, 29, 29)` bond adjacency (`bond_adjacency`).

    Returns:
        float32 `(n, len(DESCRIPTOR_NAMES))`.

    Example:

    Hydrogen fluoride, its atoms 0.92 Angstrom apart: one H, one F, one H-F
    bond, radius of gyration 0.46 and gyration eigenvalues `(0.46^2, 0, 0)`:

    >>> types = np.zeros((1, MAX_ATOMS), "int8")
    >>> types[0, :2] = [1, 5]  # H, F
    >>> positions = np.zeros((1, MAX_ATOMS, 3), "float32")
    >>> positions[0, 1, 0] = 0.92
    >>> d = descriptors(types, positions, bond_adjacency(types, positions))
    >>> names = ["n_H", "n_F", "n_atoms", "bonds_HF", "radius_of_gyration", "gyration_eig_0"]
    >>> [round(float(d[0, DESCRIPTOR_NAMES.index(k)]), 4) for k in names]
    [1.0, 1.0, 2.0, 1.0, 0.46, 0.2116]

    References:
        Rupp et al., "Fast and Accurate Modeling of Molecular Atomization
        Energies with Machine Learning", Physical Review Letters 108, 2012.
    """
    n = len(types)
    real = types > 0
    counts = np.stack([(types == i + 1).sum(1) for i in range(5)], 1)
    # Bond counts per element pair: histogram of (type_i, type_j) codes over bonded pairs.
    codes = types[:, :, None].astype("int64") * 6 + types[:, None, :]
    mol, i, j = np.nonzero(adjacency)
    hist = np.bincount(mol * 36 + codes[mol, i, j], minlength=n * 36).reshape(n, 6, 6)
    # Each bond appears as (i, j) and (j, i).
    bonds = np.stack(
        [hist[:, a + 1, b + 1] if a != b else hist[:, a + 1, a + 1] // 2 for a, b in _PAIRS], 1
    )
    z = np.concatenate([[0.0], ATOMIC_NUMBERS])[types]
    coulomb_eigs = np.zeros((n, MAX_ATOMS))
    gyration = np.zeros((n, 4))
    diag = np.arange(MAX_ATOMS)
    for start in range(0, n, 4096):
        sl = slice(start, start + 4096)
        dist = np.sqrt(_squared_distances(positions[sl])).astype("float64") * BOHR_PER_ANGSTROM
        with np.errstate(divide="ignore", invalid="ignore"):
            cm = np.where(dist > 0, z[sl, :, None] * z[sl, None, :] / dist, 0.0)
        cm[:, diag, diag] = 0.5 * z[sl] ** 2.4
        eig = np.linalg.eigvalsh(cm)
        order = np.argsort(-np.abs(eig), axis=1)
        coulomb_eigs[sl] = np.take_along_axis(eig, order, axis=1)
        mask = real[sl].astype("float64")[..., None]
        centre = (positions[sl] * mask).sum(1) / mask.sum(1)
        rel = (positions[sl] - centre[:, None]) * mask
        tensor = np.einsum("nia,nib->nab", rel, rel) / mask.sum(1)[:, :, None]
        gyration[sl, 0] = np.sqrt(np.trace(tensor, axis1=1, axis2=2))
        gyration[sl, 1:] = np.sort(np.linalg.eigvalsh(tensor), axis=1)[:, ::-1]
    return np.concatenate(
        [counts, real.sum(1, keepdims=True), bonds, coulomb_eigs, gyration], axis=1
    ).astype("float32")


def _cache_path(cache_dir, sources: dict[str, str]) -> str:
    root = cache_root(cache_dir)
    stats = [os.stat(sources[f.name]) for f in FILES[:2]]
    sizes = "_".join(str(st.st_size) for st in stats)
    # Sizes alone would reuse the arrays of a file edited or replaced in place
    # with one of the same size; the modification times tell them apart.
    stamp = hashlib.sha256(" ".join(str(st.st_mtime_ns) for st in stats).encode()).hexdigest()
    return os.path.join(root, SUBDIR, f"qm9_parsed_v{_CACHE_VERSION}_{sizes}_{stamp[:12]}.npz")


def _mark_used(cache: str) -> None:
    # The modification time orders the caches by last use for `_prune_caches`.
    try:
        os.utime(cache)
    except OSError:
        pass  # a read-only cache stays usable


def _prune_caches(folder: str, keep: int) -> None:
    """Removes all but the `keep` most recently used parse caches in `folder`.

    Also removes the temporary files of writers that were killed before they
    could clean up (untouched for `_ABANDONED_AFTER_S` seconds: a live writer
    finishes its file within seconds).

    Best effort: another process may prune the same folder meanwhile (a cache
    it removed is passed over), and a cache that cannot be removed now is
    left for a later call.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return
    caches, stale = [], []
    now = time.time()
    for name in names:
        if not (name.startswith("qm9_parsed_v") and name.endswith(".npz")):
            continue
        path = os.path.join(folder, name)
        try:
            mtime = os.path.getmtime(path)
        except OSError:  # removed since the listing
            continue
        if ".tmp." not in name:
            caches.append((mtime, path))
        elif now - mtime > _ABANDONED_AFTER_S:
            stale.append(path)
    caches.sort(reverse=True)
    stale += [path for _, path in caches[keep:]]
    for path in stale:
        try:
            os.remove(path)
        except OSError:
            continue


def parse(paths: dict[str, str], cache_dir=None, use_cache: bool = True) -> dict[str, np.ndarray]:
    """Parses (or reads from the `.npz` cache) the two QM9 tables.

    Args:
        paths: file name -> path, as returned by `locate_files`.
        cache_dir: cache root; the parsed arrays go to
            `cache_dir/qm9/qm9_parsed_v1_<sizes>_<stamp>.npz`, named by the
            two tables' sizes and modification times, so that a changed
            table is parsed again (default root
            `~/.keras/datasets/keras_mtl`). The three most recently used
            parse caches are kept there; older ones are removed.
        use_cache: read and write the cache.

    Returns:
        A dict with `mol_id`, `types`, `positions`, `adjacency`,
        `descriptors` and one raw column per target (original units), rows
        sorted by `mol_id`.

    Raises:
        ValueError: when a table is truncated or corrupt, lacks target
            columns, has an unexpected header or element, or the two tables
            list different molecules (their rows are matched by `mol_id`,
            in whatever order each lists them).

    Example:

    Two molecules written here, out of `mol_id` order: HF (id 2) and H2
    (id 1); each target column holds `-mol_id / 10`:

    >>> import gzip, os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> paths = {f.name: os.path.join(folder, f.name) for f in FILES}
    >>> columns = [c for c, _ in TARGETS.values()]
    >>> with gzip.open(paths["qm9_targets.csv.gz"], "wt") as f:
    ...     _ = f.write("mol_id," + ",".join(columns) + "\\n")
    ...     for i in (2, 1):
    ...         _ = f.write(f"{i}," + ",".join([str(-i / 10)] * len(columns)) + "\\n")
    >>> molecules = [
    ...     (2, "['H','F']", "[[0.0,0.0,0.0],[0.92,0.0,0.0]]"),
    ...     (1, "['H','H']", "[[0.0,0.0,0.0],[0.74,0.0,0.0]]"),
    ... ]
    >>> with gzip.open(paths["qm9_geometry.csv.gz"], "wt") as f:
    ...     _ = f.write("mol_id,Elements,XYZ_Ang\\n")
    ...     for molecule in molecules:
    ...         _ = f.write('%d,"%s","%s"\\n' % molecule)
    >>> data = parse(paths, use_cache=False)
    >>> data["mol_id"].tolist(), data["homo_Ha"].tolist(), data["types"][:, :3].tolist()
    ([1, 2], [-0.1, -0.2], [[1, 1, 0], [1, 5, 0]])
    >>> data["adjacency"][:, 0, 1].tolist()  # each molecule's single bond
    [1, 1]
    """
    cache = _cache_path(cache_dir, paths)
    if use_cache and os.path.isfile(cache):
        try:
            with np.load(cache, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
            data["adjacency"] = np.unpackbits(data.pop("adjacency_bits"), axis=-1)[..., :MAX_ATOMS]
            _mark_used(cache)
            return data
        except FileNotFoundError:
            pass  # pruned by another process since `isfile`: parsed anew
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            # A truncated or corrupt file: `EOFError` when empty, `BadZipFile`.
            warnings.warn(f"Ignoring the unreadable QM9 cache {cache}: {e}", stacklevel=2)
    mol_id, raw = _parse_targets(paths["qm9_targets.csv.gz"])
    geo_id, types, positions = _parse_geometry(paths["qm9_geometry.csv.gz"])
    # Each table sorted by its own ids: rows are matched by `mol_id`, not by position.
    order = np.argsort(mol_id, kind="stable")
    geo_order = np.argsort(geo_id, kind="stable")
    if not np.array_equal(mol_id[order], geo_id[geo_order]):
        raise ValueError(
            "qm9_targets.csv.gz and qm9_geometry.csv.gz list different molecules "
            f"({len(mol_id)} and {len(geo_id)} rows); mol_id only in qm9_targets.csv.gz: "
            f"{np.setdiff1d(mol_id, geo_id)[:10].tolist()}, only in qm9_geometry.csv.gz: "
            f"{np.setdiff1d(geo_id, mol_id)[:10].tolist()}."
        )
    types, positions = types[geo_order], positions[geo_order]
    adjacency = bond_adjacency(types, positions)
    data = {
        "mol_id": mol_id[order],
        "types": types,
        "positions": positions,
        "descriptors": descriptors(types, positions, adjacency),
        **{c: v[order] for c, v in raw.items()},
    }
    if use_cache:
        # One temporary file per writer: processes (or threads) that parse
        # the same tables at once would otherwise write into one file, and
        # one would install it while another is still writing it.
        tmp = f"{cache}.{os.getpid()}-{threading.get_ident()}.tmp.npz"
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            try:
                np.savez(tmp, adjacency_bits=np.packbits(adjacency, axis=-1), **data)
                os.replace(tmp, cache)
            except BaseException:
                # The partial file of a full disk or an interrupt would stay
                # for a day: pruning leaves fresh `.tmp.` files alone, as
                # another process may be writing them.
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
        except OSError as e:
            warnings.warn(f"Could not write the QM9 cache {cache}: {e}", stacklevel=2)
        else:
            _prune_caches(os.path.dirname(cache), keep=_CACHES_KEPT)
    data["adjacency"] = adjacency
    return data


def load_data(
    data_dir: str | os.PathLike | None = None,
    features: str = "descriptors",
    targets=None,
    standardize: bool = True,
    num_train: int | None = None,
    as_dataset: bool = False,
    batch_size: int = 128,
    return_info: bool = False,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    download: bool = True,
):
    """QM9 with the 11 targets of the multi-task literature and LibMTL's split.

    Targets (`TARGETS`): mu, alpha, homo, lumo, r2, zpve, U0_atom, U_atom,
    H_atom, G_atom, Cv. The energies (homo, lumo, zpve and the four
    atomization energies) are converted from Hartree to eV (x 27.2114);
    `UNITS` lists every unit. With `standardize` each target is shifted and
    scaled by its training-split mean and standard deviation (LibMTL uses
    whole-dataset statistics; multiply an MAE by `info["std"][task]` to get
    it in `UNITS`). Split: LibMTL's permutation `perm` of the molecules
    sorted by `mol_id`, test = `perm[:10000]`, validation =
    `perm[10000:20000]`, train = `perm[20000:]` (the other 110,831); each
    split's rows come in the order of `perm`, not sorted by `mol_id`
    (`info` has each row's `mol_id`).

    Features:
        `"descriptors"`: float32 `(n, 54)` per-molecule descriptors
        (`descriptors`, `DESCRIPTOR_NAMES`), standardised with training
        statistics; for an MLP.
        `"graph"`: a dict for a message-passing net, padded to 29 atoms:
        `"atom_types"` int32 `(n, 29)` (0 = padding, 1..5 = H, C, N, O, F),
        `"positions"` float32 `(n, 29, 3)` in Angstrom, `"adjacency"` uint8
        `(n, 29, 29)` bond graph (`bond_adjacency`) and `"mask"` float32
        `(n, 29)`.

    The first call parses the 55 MB geometry table (seconds) and writes the
    parsed arrays to an `.npz` cache in `cache_dir` (default
    `~/.keras/datasets/keras_mtl/qm9`); later calls read the cache.

    Args:
        data_dir: folder holding `qm9_targets.csv.gz`,
            `qm9_geometry.csv.gz` and `libmtl_qm9_random_split.npy` (or a
            `qm9` subfolder with them); defaults to `$KERAS_MTL_DATA_DIR`.
        features: `"descriptors"` or `"graph"`.
        targets: task names to return (a subset of `TARGETS`, in that
            order); `None` for all 11.
        standardize: standardise the targets with training statistics.
        num_train: keep only the first `num_train` molecules of the
            (randomly ordered) training split, for reduced CPU settings;
            statistics still come from the whole training split, and
            validation and test are unchanged. `None` keeps all 110,831.
        as_dataset: return batched `tf.data.Dataset`s.
        batch_size: batch size when `as_dataset`.
        return_info: also return a dict with `tasks`, `mean`, `std` (per
            task, in `UNITS`), `units`, the `mol_id` of each split and
            `descriptor_names`.
        cache_dir: root of the parsed-array cache.
        use_cache: read and write that cache.
        download: accepted for the common signature; these derived tables
            have no official single-file download, so missing files raise.

    Returns:
        `(x_train, y_train), (x_val, y_val), (x_test, y_test)` with `y`
        dicts `{task: (n, 1) float32}`; datasets when `as_dataset`; plus the
        info dict when `return_info`.

    Raises:
        ValueError: for unknown `features` or `targets`, an invalid
            `num_train` or `batch_size` (checked before the files are read),
            or truncated, corrupt or inconsistent files.
        FileNotFoundError: when `data_dir` does not exist or the files are
            missing.

    Example:

    >>> from keras_mtl.datasets import qm9
    >>> len(qm9.TARGETS), qm9.UNITS["homo"], qm9.UNITS["mu"]
    (11, 'eV', 'D')

    References:
        Ramakrishnan et al., "Quantum chemistry structures and properties of
        134 kilo molecules", Scientific Data 2014. Lin et al., "Dual-Balancing
        for Multi-Task Learning" (DB-MTL), 2023.
    """
    if features not in ("descriptors", "graph"):
        raise ValueError(
            "Received an invalid value for `features`, expected 'descriptors' or 'graph'. "
            f"Received: features={features!r}"
        )
    tasks = tuple(TARGETS) if targets is None else tuple(targets)
    unknown = [t for t in tasks if t not in TARGETS]
    if unknown or not tasks:
        raise ValueError(
            f"Received an invalid value for `targets`, expected a non-empty subset of "
            f"{tuple(TARGETS)}. Received: targets={targets!r}"
        )
    num_train = check_positive_int("num_train", num_train, allow_none=True)
    batch_size = check_positive_int("batch_size", batch_size)
    paths = locate_files(SUBDIR, FILES, data_dir=data_dir, download=download, cache_dir=cache_dir)
    data = parse(paths, cache_dir=cache_dir, use_cache=use_cache)
    n = len(data["mol_id"])
    split_file = FILES[2]
    split_path = paths[split_file.name]
    with open(split_path, "rb") as f, reading(split_path, split_file):
        perm = np.load(f, allow_pickle=False)
    if len(perm) != n or not np.array_equal(np.sort(perm), np.arange(n)):
        raise ValueError(
            f"libmtl_qm9_random_split.npy must be a permutation of 0..{n - 1} "
            f"(one entry per molecule); it has {len(perm)} entries."
        )
    index = {"test": perm[:10000], "val": perm[10000:20000], "train": perm[20000:]}

    y_all = {}
    mean, std = {}, {}
    for t in tasks:
        column, energy = TARGETS[t]
        v = data[column] * (HARTREE_TO_EV if energy else 1.0)
        mean[t] = float(v[index["train"]].mean())
        std[t] = float(v[index["train"]].std())
        if standardize:
            v = (v - mean[t]) / std[t]
        y_all[t] = v.astype("float32")[:, None]

    if features == "descriptors":
        d = data["descriptors"].astype("float64")
        mu, sd = d[index["train"]].mean(0), d[index["train"]].std(0)
        x_all = ((d - mu) / np.where(sd > 0, sd, 1.0)).astype("float32")
    else:
        x_all = {
            "atom_types": data["types"].astype("int32"),
            "positions": data["positions"],
            "adjacency": data["adjacency"],
            "mask": (data["types"] > 0).astype("float32"),
        }

    def take(idx):
        x = {k: v[idx] for k, v in x_all.items()} if isinstance(x_all, dict) else x_all[idx]
        return x, {t: y[idx] for t, y in y_all.items()}

    if num_train is not None:
        index["train"] = index["train"][:num_train]
    splits = tuple(take(index[s]) for s in ("train", "val", "test"))
    if as_dataset:
        splits = tuple(
            to_tf_dataset(x, y, batch_size=batch_size, shuffle=i == 0, seed=0)
            for i, (x, y) in enumerate(splits)
        )
    if return_info:
        info = {
            "tasks": tasks,
            "mean": mean,
            "std": std,
            "units": {t: UNITS[t] for t in tasks},
            "descriptor_names": DESCRIPTOR_NAMES,
            **{f"{s}_mol_id": data["mol_id"][index[s]] for s in ("train", "val", "test")},
        }
        return (*splits, info)
    return splits
