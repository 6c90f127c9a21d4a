"""Aggregation, tables, JSON/CSV files and the Pareto plot of `keras-mtl bench`."""

from __future__ import annotations

import csv
import json
import os
import statistics

from keras_mtl.metrics import delta_m


def _mean_std(values):
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(problem, config, runs: list[dict], stl: dict) -> dict:
    """Aggregates per-seed runs into mean ± std rows with Δm and speed ratios.

    Args:
        problem: the `Problem` (task specs).
        config: the `BenchConfig`.
        runs: per-run dicts with `arch`, `balancer`, `seed`, `metrics`,
            `epoch_seconds`.
        stl: `{(arch, task, seed): metric}` single-task baselines.

    Returns:
        A JSON-ready dict with `config`, `tasks`, `stl`, `rows` and `runs`.

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
            row = {"arch": arch, "balancer": balancer, "seeds": len(mine)}
            for t in tasks:
                row[t] = _mean_std([r["metrics"][t] for r in mine])
            if stl:
                deltas = [
                    delta_m(
                        {t: {problem.tasks[t].metric: r["metrics"][t]} for t in tasks},
                        {t: {problem.tasks[t].metric: stl[(arch, t, r["seed"])]} for t in tasks},
                        higher,
                    )
                    for r in mine
                ]
                row["delta_m"] = _mean_std(deltas)
            row["epoch_seconds"] = statistics.median(r["epoch_seconds"] for r in mine)
            if balancer == "ew":
                ew_time = row["epoch_seconds"]
            rows.append(row)
        for row in rows:
            if row["arch"] == arch:
                row["time_vs_ew"] = None if ew_time is None else row["epoch_seconds"] / ew_time
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
    """Flags rows whose mean metrics no other row dominates."""

    def oriented(row):
        return [row[t][0] if problem.tasks[t].higher_is_better else -row[t][0] for t in tasks]

    for row in rows:
        mine = oriented(row)
        row["pareto"] = not any(
            all(o >= m for o, m in zip(oriented(other), mine, strict=True))
            and oriented(other) != mine
            for other in rows
        )


def table(results: dict) -> str:
    """Formats the summary rows as a Markdown table.

    Args:
        results: the dict returned by `summarize`.

    Returns:
        The table: one STL row per architecture and task, then one row per
        architecture and balancer (mean ± std per task, Δm, seconds per
        epoch, time relative to `ew`, `*` on the Pareto front).

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
    for r in results["rows"]:
        cells = [r["arch"], r["balancer"], *[f"{r[t][0]:.4f} ± {r[t][1]:.4f}" for t in tasks]]
        if has_delta:
            cells.append(f"{r['delta_m'][0]:+.2f} ± {r['delta_m'][1]:.2f}")
        ratio = "-" if r.get("time_vs_ew") is None else f"{r['time_vs_ew']:.2f}x"
        cells += [f"{r['epoch_seconds']:.2f}", ratio, "*" if r["pareto"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(results: dict, out_dir: str) -> None:
    """Writes results.json, results.csv and pareto.png into `out_dir`.

    Args:
        results: the dict returned by `summarize`.
        out_dir: an existing folder.

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
    >>> sorted(os.listdir(folder))
    ['pareto.png', 'results.csv', 'results.json']
    >>> print(open(os.path.join(folder, "results.csv")).read().strip())
    arch,balancer,seed,a,b,epoch_seconds
    mmoe,ew,0,0.88,0.45,2.0
    mmoe,mgda,0,0.72,0.55,3.0
    """
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    tasks = list(results["tasks"])
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "balancer", "seed", *tasks, "epoch_seconds"])
        for r in results["runs"]:
            writer.writerow(
                [
                    r["arch"],
                    r["balancer"],
                    r["seed"],
                    *[r["metrics"][t] for t in tasks],
                    r["epoch_seconds"],
                ]
            )
    plot_pareto(results, os.path.join(out_dir, "pareto.png"))


def plot_pareto(results: dict, path: str) -> None:
    """Scatter of the first two tasks' mean metrics, Pareto-optimal rows highlighted.

    Needs matplotlib. The STL baselines are drawn as dotted lines.

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
