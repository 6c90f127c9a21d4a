"""UCI Census-Income (KDD) with the two task groups of the MMoE paper."""

from __future__ import annotations

import collections
import csv
import os

import numpy as np

from keras_mtl._validation import check_numpy_seed, check_positive_int, is_integer
from keras_mtl.datasets.data_files import (
    DataFile,
    gunzip,
    locate_files,
    reading,
    split_indices,
    to_tf_dataset,
)

SUBDIR = "census_income_kdd"
_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/"
FILES = (
    DataFile(
        "census-income.data.gz",
        _UCI + "census-income.data.gz",
        "d4ed3d03fbb0626bc672bc5830041edf09267494757d93a02fa5120ae2ab5f3a",
    ),
    DataFile(
        "census-income.test.gz",
        _UCI + "census-income.test.gz",
        "2f775ecbea6260b9ce9f9adac81bf0d275919a8c44b762f8e45b7541999e3e07",
    ),
)

# The 41 attributes of census-income.names in file order, then the income label.
COLUMNS = (
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_stat",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income",
)
# The attributes census-income.names marks "continuous"; the numeric-looking
# recodes (industry, occupation, veterans benefits, year, ...) are nominal.
NUMERIC = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
)
# A survey sampling weight (how many people the record stands for), not an attribute.
EXCLUDED = ("instance_weight",)
# "Education >= college" of task group 2: any schooling from college on.
COLLEGE_OR_ABOVE = frozenset(
    {
        "Some college but no degree",
        "Associates degree-occup /vocational",
        "Associates degree-academic program",
        "Bachelors degree(BA AB BS)",
        "Masters degree(MA MS MEng MEd MSW MBA)",
        "Prof school degree (MD DDS DVM LLB JD)",
        "Doctorate degree(PhD EdD)",
    }
)
TASK_GROUPS = {1: ("income", "marital"), 2: ("education", "marital")}
_LABEL_COLUMN = {"income": "income", "marital": "marital_stat", "education": "education"}


def _label(task: str, values: list[str]) -> np.ndarray:
    if task == "income":
        y = [v.startswith("50000+") for v in values]
    elif task == "marital":
        y = [v == "Never married" for v in values]
    else:
        y = [v in COLLEGE_OR_ABOVE for v in values]
    return np.asarray(y, dtype="float32")[:, None]


def _read(path: str, data_file: DataFile) -> list[list[str]]:
    """The columns of one UCI file as lists of strings."""
    text = gunzip(path, data_file).decode("latin-1")
    ncol = len(COLUMNS)
    with reading(path, data_file):
        lines = [line for line in text.splitlines() if line]
        if not lines:
            raise ValueError("the file has no rows")
        # Fast path: the UCI files separate fields by exactly ", " and no value
        # contains a comma, so one split and strided slices give the columns.
        flat = ", ".join(lines).split(", ")
        if len(flat) == ncol * len(lines):
            cols = [flat[j::ncol] for j in range(ncol)]
            if set(cols[-1]) <= {"- 50000.", "50000+."}:
                return cols
        rows = list(csv.reader(lines, skipinitialspace=True))
        bad = [i for i, r in enumerate(rows) if len(r) != ncol]
        if bad:
            raise ValueError(
                f"expected {ncol} comma-separated columns per row, row {bad[0]} has "
                f"{len(rows[bad[0]])}"
            )
        cols = [list(c) for c in zip(*rows, strict=True)]
        # Any other label would silently read as income <= 50K.
        labels = ("- 50000.", "50000+.")
        unknown = [i for i, v in enumerate(cols[-1]) if v.strip() not in labels]
        if unknown:
            raise ValueError(
                f"column 'income', row {unknown[0]}: {cols[-1][unknown[0]]!r} is not one of "
                f"{list(labels)}"
            )
    return cols


def _numbers(values: list[str], column: str, path: str, data_file: DataFile) -> np.ndarray:
    """A continuous column as float64; a field that is not a finite number is a corrupt file."""
    with reading(path, data_file):
        try:
            numbers = np.asarray(values, dtype="float64")
        except ValueError:
            numbers = None
        if numbers is None or not np.isfinite(numbers).all():
            for row, value in enumerate(values):
                try:
                    if np.isfinite(float(value)):
                        continue
                except ValueError:
                    pass
                raise ValueError(f"column {column!r}, row {row}: {value!r} is not a finite number")
    return numbers


def load_data(
    data_dir: str | os.PathLike | None = None,
    group: int = 1,
    seed: int = 0,
    as_dataset: bool = False,
    batch_size: int = 256,
    return_info: bool = False,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
):
    """Census-Income (KDD) as a two-task binary classification problem.

    Task group 1 (the MMoE paper's): `"income"` (income > 50K) and
    `"marital"` (marital status "Never married"). Task group 2:
    `"education"` (education from college on, `COLLEGE_OR_ABOVE`) and
    `"marital"`. The UCI training file is the training split; the UCI test
    file is split 1:1 at random (seeded) into validation and test, as in the
    paper.

    Features: the 41 attributes minus the instance weight (a survey weight)
    and minus the columns that define the group's labels (the income label
    is never a feature); 503 columns for group 1, 486 for group 2. The 7 continuous attributes are standardised with
    the training mean and standard deviation; every other attribute is
    one-hot encoded with the categories seen in training (`"?"` is a
    category; a category seen only in validation/test encodes as all zeros).

    Args:
        data_dir: folder holding `census-income.data.gz` and
            `census-income.test.gz` (or a `census_income_kdd` subfolder with
            them); defaults to `$KERAS_MTL_DATA_DIR`, then the download cache.
        group: task group, 1 or 2.
        seed: seed of the validation/test split, a non-negative integer.
        as_dataset: return batched `tf.data.Dataset`s instead of numpy
            arrays (the training one reshuffles every epoch).
        batch_size: batch size when `as_dataset`.
        return_info: also return a dict with `feature_names`, `tasks`,
            `numeric_mean` and `numeric_std`.
        download: whether missing files may be downloaded from UCI.
        cache_dir: download cache root.

    Returns:
        `(x_train, y_train), (x_val, y_val), (x_test, y_test)` with `x`
        float32 `(n, num_features)` and `y` dicts `{task: (n, 1) float32}`;
        `(train_ds, val_ds, test_ds)` when `as_dataset`; plus the info dict
        as a fourth element when `return_info`.

    Raises:
        ValueError: for an unknown `group`, an invalid `seed` or
            `batch_size` (checked before the files are read), or a
            truncated or corrupt file: one that is not gzip, has rows of
            the wrong width, an unknown income label or a continuous field
            that is not a finite number (the message names the file, the
            column and value where there is one, and its official SHA-256).
        FileNotFoundError: when `data_dir` does not exist, or the files are
            missing and cannot be downloaded.

    Example:

    >>> from keras_mtl.datasets import census_income
    >>> census_income.TASK_GROUPS[1]
    ('income', 'marital')

    References:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with
        Multi-gate Mixture-of-Experts", KDD 2018.
    """
    # `True == 1` and `1.0 == 1`: without the type check they would pass as group 1.
    if not is_integer(group) or group not in TASK_GROUPS:
        raise ValueError(
            "Received an invalid value for `group`, expected one of "
            f"{sorted(TASK_GROUPS)}. Received: group={group!r}"
        )
    seed = check_numpy_seed(seed)
    batch_size = check_positive_int("batch_size", batch_size)
    tasks = TASK_GROUPS[int(group)]
    paths = locate_files(SUBDIR, FILES, data_dir=data_dir, download=download, cache_dir=cache_dir)
    train_file, test_file = FILES
    train_cols = _read(paths[train_file.name], train_file)
    test_cols = _read(paths[test_file.name], test_file)
    col = {name: i for i, name in enumerate(COLUMNS)}

    y_train = {t: _label(t, train_cols[col[_LABEL_COLUMN[t]]]) for t in tasks}
    y_rest = {t: _label(t, test_cols[col[_LABEL_COLUMN[t]]]) for t in tasks}

    dropped = set(EXCLUDED) | {"income"} | {_LABEL_COLUMN[t] for t in tasks}
    features = [c for c in COLUMNS if c not in dropped]
    numeric = [c for c in features if c in NUMERIC]
    categorical = [c for c in features if c not in NUMERIC]

    n_train, n_rest = len(train_cols[0]), len(test_cols[0])
    num_train, num_rest = (
        np.stack([_numbers(cols[col[c]], c, paths[f.name], f) for c in numeric], 1)
        for cols, f in ((train_cols, train_file), (test_cols, test_file))
    )
    mean = num_train.mean(axis=0)
    std = num_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    vocabs = [sorted(set(train_cols[col[c]])) for c in categorical]
    width = len(numeric) + sum(len(v) for v in vocabs)
    x_train = np.zeros((n_train, width), dtype="float32")
    x_rest = np.zeros((n_rest, width), dtype="float32")
    x_train[:, : len(numeric)] = (num_train - mean) / std
    x_rest[:, : len(numeric)] = (num_rest - mean) / std
    names = list(numeric)
    offset = len(numeric)
    for c, vocab in zip(categorical, vocabs, strict=True):
        # Categories never seen in training map to -1 (an all-zero one-hot row).
        index = collections.defaultdict(lambda: -1, {v: i for i, v in enumerate(vocab)})
        for x, cols in ((x_train, train_cols), (x_rest, test_cols)):
            codes = np.fromiter(map(index.__getitem__, cols[col[c]]), "int64", len(x))
            rows = np.nonzero(codes >= 0)[0]
            x[rows, offset + codes[rows]] = 1.0
        names += [f"{c}={v}" for v in vocab]
        offset += len(vocab)

    val_idx, test_idx = split_indices(n_rest, (0.5, 0.5), seed=seed)
    train = (x_train, y_train)
    val = (x_rest[val_idx], {t: y[val_idx] for t, y in y_rest.items()})
    test = (x_rest[test_idx], {t: y[test_idx] for t, y in y_rest.items()})
    splits = (train, val, test)
    if as_dataset:
        splits = tuple(
            to_tf_dataset(x, y, batch_size=batch_size, shuffle=i == 0, seed=seed)
            for i, (x, y) in enumerate(splits)
        )
    if return_info:
        info = {
            "feature_names": names,
            "tasks": tasks,
            "numeric_mean": dict(zip(numeric, mean.tolist(), strict=True)),
            "numeric_std": dict(zip(numeric, std.tolist(), strict=True)),
        }
        return (*splits, info)
    return splits
