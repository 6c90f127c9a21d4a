"""Aggregation, tables, JSON/CSV files and the Pareto plot of `keras-mtl bench`."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import warnings

from keras_mtl.metrics import delta_m

_NAN_PAIR = (math.nan, math.nan)


def _mean_std(values):
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(problem, config, runs: list[dict], stl: dict) -> dict:
    """Aggregates per-seed runs into mean ± std rows with Δm and speed ratios.

    Args:
        problem: the `Problem` (task specs).
        config: the `BenchConfig`.
        runs: per-run dicts with `arch`, `balancer`, `seed`, `metrics`,
            `epoch_seconds`; a failed run also has `error` (its metrics
            are NaN).
        stl: `{(arch, task, seed): metric}` single-task baselines.

    Returns:
        A JSON-ready dict with `config`, `tasks`, `stl`, `rows` and `runs`.
        A row's means and `seeds` count its successful runs only; a row with
        failed runs has `failed` (their number) and `error` (the first one's
        message), and a row whose Δm cannot be computed has a NaN `delta_m`
        and a `note` saying why. Architecture x balancer pairs without runs
        have no row.

    Example:

    Against the STL baselines (AUC 0.8, MSE 0.5), `ew` is 10 % better on
    both tasks and `mgda` 10 % worse, so `ew` dominates; `mgda`'s epochs take
    1.5 times as long:

    >>> from keras_mtl.bench.problems import Problem, TaskSpec
    >>> from keras_mtl.bench.report import summarize
    >>> from keras_mtl.bench.runner import BenchConfig
    >>> tasks = {"a": TaskSpec(1, "sigmoid", "binary_crossentropy", "auc", True),
    ...          "b": TaskSpec(1, None, "mse", "mse", False)}
    >>> problem = Problem("toy", tasks, None, None, None, "mlp")
    >>> runs = [
    ...     {"arch": "mmoe", "balancer": "ew", "seed": 0, "metrics": {"a": 0.88, "b": 0.45},
    ...      "epoch_seconds": 2.0},
    ...     {"arch": "mmoe", "balancer": "mgda", "seed": 0, "metrics": {"a": 0.72, "b": 0.55},
    ...      "epoch_seconds": 3.0},
    ... ]
    >>> stl = {("mmoe", "a", 0): 0.8, ("mmoe", "b", 0): 0.5}
    >>> results = summarize(problem, BenchConfig(balancers=("ew", "mgda")), runs, stl)
    >>> [(r["balancer"], round(r["delta_m"][0], 4), r["time_vs_ew"], r["pareto"])
    ...  for r in results["rows"]]
    [('ew', 10.0, 1.0, True), ('mgda', -10.0, 1.5, False)]
    """
    tasks = list(problem.tasks)
    higher = {t: {problem.tasks[t].metric: problem.tasks[t].higher_is_better} for t in tasks}
    rows = []
    for arch in config.archs:
        ew_time = None
        for balancer in config.balancers:
            mine = [r for r in runs if r["arch"] == arch and r["balancer"] == balancer]
            if not mine:
                # Not run yet: a summary written while the bench is running.
                continue
            ok = [r for r in mine if not r.get("error")]
            row = {"arch": arch, "balancer": balancer, "seeds": len(ok)}
            failed = [r for r in mine if r.get("error")]
            if failed:
                row["failed"] = len(failed)
                row["error"] = failed[0]["error"]
            for t in tasks:
                row[t] = _mean_std([r["metrics"][t] for r in ok]) if ok else _NAN_PAIR
            if stl:
                row["delta_m"] = _NAN_PAIR
                if ok:
                    try:
                        deltas = [
                            delta_m(
                                {t: {problem.tasks[t].metric: r["metrics"][t]} for t in tasks},
                                {
                                    t: {problem.tasks[t].metric: stl[(arch, t, r["seed"])]}
                                    for t in tasks
                                },
                                higher,
                            )
                            for r in ok
                        ]
                        row["delta_m"] = _mean_std(deltas)
                    except ValueError as error:
                        # A NaN or zero score (an AUC of a one-class test set, a
                        # failed baseline) leaves this row without Δm, not the
                        # whole bench without results.
                        row["note"] = f"Δm not computed: {error}"
            row["epoch_seconds"] = (
                statistics.median(r["epoch_seconds"] for r in ok) if ok else math.nan
            )
            if balancer == "ew" and ok:
                ew_time = row["epoch_seconds"]
            rows.append(row)
        for row in rows:
            if row["arch"] == arch:
                row["time_vs_ew"] = (
                    None
                    if ew_time is None or math.isnan(row["epoch_seconds"])
                    else row["epoch_seconds"] / ew_time
                )
    _mark_pareto(rows, problem, tasks)
    stl_rows = {
        f"{arch}/{t}": _mean_std([v for (a, task, _), v in stl.items() if a == arch and task == t])
        for arch in config.archs
        for t in tasks
        if stl
    }
    return {
        "dataset": problem.name,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
        "tasks": {
            t: {"metric": s.metric, "higher_is_better": s.higher_is_better}
            for t, s in problem.tasks.items()
        },
        "stl": stl_rows,
        "rows": rows,
        "runs": runs,
    }


def _mark_pareto(rows, problem, tasks):
    """Flags rows whose mean metrics no other row dominates.

    A row with a NaN mean (failed, or a score its test set cannot define) is
    never on the front and dominates no row: it cannot be compared.
    """

    def oriented(row):
        return [row[t][0] if problem.tasks[t].higher_is_better else -row[t][0] for t in tasks]

    comparable = [r for r in rows if all(math.isfinite(v) for v in oriented(r))]
    for row in rows:
        mine = oriented(row)
        row["pareto"] = any(row is r for r in comparable) and not any(
            all(o >= m for o, m in zip(oriented(other), mine, strict=True))
            and oriented(other) != mine
            for other in comparable
        )


def table(results: dict) -> str:
    """Formats the summary rows as a Markdown table.

    Args:
        results: the dict returned by `summarize`.

    Returns:
        The table: one STL row per architecture and task, then one row per
        architecture and balancer (mean ± std per task, Δm, seconds per
        epoch, time relative to `ew`, `*` on the Pareto front), then a
        `Note:` line per failed run or Δm that could not be computed. A row
        whose every seed failed says `failed:` and why.

    Example:

    >>> from keras_mtl.bench.problems import Problem, TaskSpec
    >>> from keras_mtl.bench.report import summarize
    >>> from keras_mtl.bench.runner import BenchConfig
    >>> tasks = {"a": TaskSpec(1, "sigmoid", "binary_crossentropy", "auc", True),
    ...          "b": TaskSpec(1, None, "mse", "mse", False)}
    >>> problem = Problem("toy", tasks, None, None, None, "mlp")
    >>> runs = [
    ...     {"arch": "mmoe", "balancer": "ew", "seed": 0, "metrics": {"a": 0.88, "b": 0.45},
    ...      "epoch_seconds": 2.0},
    ...     {"arch": "mmoe", "balancer": "mgda", "seed": 0, "metrics": {"a": 0.72, "b": 0.55},
    ...      "epoch_seconds": 3.0},
    ... ]
    >>> stl = {("mmoe", "a", 0): 0.8, ("mmoe", "b", 0): 0.5}
    >>> results = summarize(problem, BenchConfig(balancers=("ew", "mgda")), runs, stl)
    >>> print(table(results))
    | arch | balancer | a auc | b mse | Δm % | s/epoch | vs ew | Pareto |
    |---|---|---|---|---|---|---|---|
    | mmoe | STL (a) | 0.8000 ± 0.0000 |  |  |  |  |  |
    | mmoe | STL (b) |  | 0.5000 ± 0.0000 |  |  |  |  |
    | mmoe | ew | 0.8800 ± 0.0000 | 0.4500 ± 0.0000 | +10.00 ± 0.00 | 2.00 | 1.00x | * |
    | mmoe | mgda | 0.7200 ± 0.0000 | 0.5500 ± 0.0000 | -10.00 ± 0.00 | 3.00 | 1.50x |  |
    """
    tasks = list(results["tasks"])
    header = ["arch", "balancer", *[f"{t} {results['tasks'][t]['metric']}" for t in tasks]]
    has_delta = any("delta_m" in r for r in results["rows"])
    header += (["Δm %"] if has_delta else []) + ["s/epoch", "vs ew", "Pareto"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arch_task, (mean, std) in results["stl"].items():
        arch, task = arch_task.split("/", 1)
        cells = [arch, f"STL ({task})"] + [
            f"{mean:.4f} ± {std:.4f}" if t == task else "" for t in tasks
        ]
        cells += ([""] if has_delta else []) + ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for r in results["rows"]:
        label = f"{r['arch']}/{r['balancer']}"
        if r["seeds"] == 0:
            cells = [r["arch"], r["balancer"], f"failed: {_reason(r['error'])}"]
            cells += [""] * (len(header) - 3)
            lines.append("| " + " | ".join(cells) + " |")
            notes.append(f"{label} failed: {r['error']}")
            continue
        cells = [r["arch"], r["balancer"], *[f"{r[t][0]:.4f} ± {r[t][1]:.4f}" for t in tasks]]
        if has_delta:
            mean, std = r["delta_m"]
            cells.append("n/a" if math.isnan(mean) else f"{mean:+.2f} ± {std:.2f}")
        ratio = "-" if r.get("time_vs_ew") is None else f"{r['time_vs_ew']:.2f}x"
        cells += [f"{r['epoch_seconds']:.2f}", ratio, "*" if r["pareto"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
        if r.get("failed"):
            notes.append(f"{label}: {r['failed']} seed(s) failed: {r['error']}")
        if r.get("note"):
            notes.append(f"{label}: {r['note']}")
    lines += [f"Note: {n}" for n in notes]
    return "\n".join(lines)


def _reason(error: str) -> str:
    """The first clause of an error message, short enough for a table cell."""
    clause = re.split(r"; |\. |\n", error.strip(), maxsplit=1)[0]
    return clause if len(clause) <= 80 else clause[:79] + "…"


def write(results: dict, out_dir: str, plot: bool = True) -> list[str]:
    """Writes results.json, results.csv and pareto.png into `out_dir`.

    Each file is replaced whole, so that rewriting them after every run
    never leaves a truncated file. results.json is strict JSON: a NaN or
    infinite number (a failed run, an undefined score) is written as `null`,
    which `read_results` reads back as NaN. Without matplotlib the plot is
    skipped with a warning.

    Args:
        results: the dict returned by `summarize`.
        out_dir: an existing folder.
        plot: whether to draw pareto.png.

    Returns:
        The names of the files written.

    Example:

    >>> from keras_mtl.bench.problems import Problem, TaskSpec
    >>> from keras_mtl.bench.report import summarize
    >>> from keras_mtl.bench.runner import BenchConfig
    >>> tasks = {"a": TaskSpec(1, "sigmoid", "binary_crossentropy", "auc", True),
    ...          "b": TaskSpec(1, None, "mse", "mse", False)}
    >>> problem = Problem("toy", tasks, None, None, None, "mlp")
    >>> runs = [
    ...     {"arch": "mmoe", "balancer": "ew", "seed": 0, "metrics": {"a": 0.88, "b": 0.45},
    ...      "epoch_seconds": 2.0},
    ...     {"arch": "mmoe", "balancer": "mgda", "seed": 0, "metrics": {"a": 0.72, "b": 0.55},
    ...      "epoch_seconds": 3.0},
    ... ]
    >>> stl = {("mmoe", "a", 0): 0.8, ("mmoe", "b", 0): 0.5}
    >>> results = summarize(problem, BenchConfig(balancers=("ew", "mgda")), runs, stl)
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write(results, folder)
    ['results.json', 'results.csv', 'pareto.png']
    >>> sorted(os.listdir(folder))
    ['pareto.png', 'results.csv', 'results.json']
    >>> print(open(os.path.join(folder, "results.csv")).read().strip())
    arch,balancer,seed,a,b,epoch_seconds,error
    mmoe,ew,0,0.88,0.45,2.0,
    mmoe,mgda,0,0.72,0.55,3.0,
    """
    replace_file(os.path.join(out_dir, "results.json"), to_json(results, indent=2))
    tasks = list(results["tasks"])
    lines = io.StringIO()
    writer = csv.writer(lines)
    writer.writerow(["arch", "balancer", "seed", *tasks, "epoch_seconds", "error"])
    for r in results["runs"]:
        writer.writerow(
            [
                r["arch"],
                r["balancer"],
                r["seed"],
                *[r["metrics"][t] for t in tasks],
                r["epoch_seconds"],
                r.get("error", ""),
            ]
        )
    replace_file(os.path.join(out_dir, "results.csv"), lines.getvalue())
    written = ["results.json", "results.csv"]
    if plot:
        try:
            plot_pareto(results, os.path.join(out_dir, "pareto.png"))
            written.append("pareto.png")
        except ImportError as error:
            # matplotlib is an optional extra: the results are what matters.
            warnings.warn(
                f"pareto.png not written: the plot needs matplotlib ({error}). "
                "Install it with `pip install matplotlib`.",
                stacklevel=2,
            )
    return written


def to_json(value, **kwargs) -> str:
    """`json.dumps` of `value` as strict JSON: NaN and infinities become `null`.

    Python's default writes `NaN` and `Infinity`, which are not JSON and
    which strict parsers (JavaScript's `JSON.parse`, `jq`, many others)
    reject. Path objects are written as their string.

    Args:
        value: dicts, lists, tuples, strings, numbers, bools, `None` and
            `os.PathLike`s.
        **kwargs: further arguments of `json.dumps` (`indent`, ...).

    Returns:
        The JSON text.

    Raises:
        TypeError: for a value JSON cannot hold.

    Example:

    >>> from keras_mtl.bench.report import to_json
    >>> to_json({"a": float("nan"), "b": (1.5, float("inf"))})
    '{"a": null, "b": [1.5, null]}'
    """
    return json.dumps(_strict(value), allow_nan=False, **kwargs)


def _strict(value):
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def read_results(path: str) -> dict:
    """Reads a results.json written by `write`, its `null` scores back as NaN.

    The scores, Δm and epoch times of the runs, rows and STL baselines that
    were NaN (or infinite) when written are `null` in the file and NaN
    here, so the dict can be passed to `table` and `plot_pareto` as
    `summarize` returned it (pairs come back as lists). `time_vs_ew` stays
    `None` where it was. Files of older versions, with `NaN` literals, are
    read as well.

    Args:
        path: the results.json file.

    Returns:
        The results dict.

    Raises:
        OSError: when the file cannot be read.
        ValueError: when it is not JSON.

    Example:

    >>> import os, tempfile
    >>> from keras_mtl.bench.report import read_results, replace_file, to_json
    >>> path = os.path.join(tempfile.mkdtemp(), "results.json")
    >>> replace_file(path, to_json({"tasks": {"a": {}}, "stl": {}, "rows": [],
    ...     "runs": [{"metrics": {"a": float("nan")}, "epoch_seconds": float("nan")}]}))
    >>> read_results(path)["runs"]
    [{'metrics': {'a': nan}, 'epoch_seconds': nan}]
    """
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    tasks = list(results.get("tasks", ()))

    def number(value):
        return math.nan if value is None else value

    for run in results.get("runs", ()):
        run["metrics"] = {t: number(v) for t, v in run.get("metrics", {}).items()}
        if "epoch_seconds" in run:
            run["epoch_seconds"] = number(run["epoch_seconds"])
    for row in results.get("rows", ()):
        for key in [*tasks, "delta_m"]:
            if isinstance(row.get(key), list):
                row[key] = [number(v) for v in row[key]]
        if "epoch_seconds" in row:
            row["epoch_seconds"] = number(row["epoch_seconds"])
    results["stl"] = {k: [number(v) for v in pair] for k, pair in results.get("stl", {}).items()}
    return results


def replace_file(path: str, text: str) -> None:
    """Writes `text` to `path` whole or not at all.

    The text goes to a temporary file beside `path`, which then replaces it
    in one step: an interrupted write leaves the old file (or none).

    Args:
        path: the file.
        text: its new content.

    Example:

    >>> import os, tempfile
    >>> from keras_mtl.bench.report import replace_file
    >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> replace_file(path, "1.5")
    >>> open(path).read(), os.listdir(os.path.dirname(path))
    ('1.5', ['a.json'])
    """
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "w", newline="") as f:
            f.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def plot_pareto(results: dict, path: str) -> None:
    """Scatter of the first two tasks' mean metrics, Pareto-optimal rows highlighted.

    Needs matplotlib. The STL baselines are drawn as dotted lines; rows
    without a finite mean on both tasks are left out.

    Args:
        results: the dict returned by `summarize`.
        path: the PNG file to write (6 x 4.5 inches at 120 dpi).

    Example:

    >>> import os, struct, tempfile
    >>> results = {
    ...     "dataset": "toy",
    ...     "tasks": {"a": {"metric": "auc"}, "b": {"metric": "mse"}},
    ...     "stl": {"mmoe/a": (0.8, 0.0)},
    ...     "rows": [{"arch": "mmoe", "balancer": "ew", "a": (0.88, 0.01), "b": (0.45, 0.02),
    ...               "pareto": True}],
    ... }
    >>> path = os.path.join(tempfile.mkdtemp(), "pareto.png")
    >>> plot_pareto(results, path)
    >>> header = open(path, "rb").read(24)
    >>> header[:8] == b"\\x89PNG\\r\\n\\x1a\\n", struct.unpack(">II", header[16:24])  # 720 x 540 pixels
    (True, (720, 540))
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])[:2]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results["rows"]:
        x, y = r[tasks[0]][0], r[tasks[-1]][0]
        if not (math.isfinite(x) and math.isfinite(y)):
            # A failed row, or a score its test set cannot define: no point to draw.
            continue
        ax.errorbar(
            x,
            y,
            xerr=r[tasks[0]][1],
            yerr=r[tasks[-1]][1],
            fmt="o" if r["pareto"] else "x",
            color="C3" if r["pareto"] else "C0",
        )
        ax.annotate(
            f"{r['arch']}/{r['balancer']}",
            (x, y),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, 3),
        )
    for arch_task, (mean, _) in results["stl"].items():
        task = arch_task.split("/", 1)[1]
        if task == tasks[0]:
            ax.axvline(mean, ls=":", color="grey")
        if task == tasks[-1]:
            ax.axhline(mean, ls=":", color="grey")
    labels = [f"{t} {results['tasks'][t]['metric']}" for t in tasks]
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[-1])
    ax.set_title(f"{results['dataset']}: Pareto-optimal rows in red, STL dotted")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
