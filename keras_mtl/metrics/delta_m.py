"""Delta-m: the average relative improvement of a multi-task model over single-task baselines."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_AVERAGES = ("tasks", "metrics")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _as_nested(values: Any, argument: str) -> dict[str, dict[str | None, float]]:
    """`{task: {metric: v}}`, `{task: v}` or a sequence of numbers -> `{task: {metric: v}}`.

    A flat entry gets the metric name `None`; a sequence entry `i` gets task `i`.
    """
    if isinstance(values, Mapping):
        items = list(values.items())
    elif isinstance(values, (Sequence, np.ndarray)) and not isinstance(values, str):
        # One number per task: a nested sequence is refused rather than flattened,
        # which would silently turn it into more tasks.
        if isinstance(values, np.ndarray):
            flat = values.ndim == 1
        else:
            flat = not any(
                isinstance(v, Sequence | np.ndarray | Mapping) and not isinstance(v, str)
                for v in values
            )
        if not flat:
            raise ValueError(
                f"`{argument}` as a sequence must be flat, one number per task. Received: "
                f"{argument}={values!r}"
            )
        items = list(enumerate(values))
    else:
        raise TypeError(
            f"`{argument}` must be a dict {{task: {{metric: value}}}}, a dict {{task: value}} "
            f"or a sequence of numbers. Received: {argument}={values!r}"
        )
    if not items:
        raise ValueError(f"`{argument}` is empty.")
    out: dict = {}
    for task, entry in items:
        if isinstance(entry, Mapping):
            if not entry:
                raise ValueError(
                    f"`{argument}[{task!r}]` has no metrics; expected a number or a dict with at "
                    f"least one {{metric: value}} entry. Received: {argument}[{task!r}]={entry!r}"
                )
            metrics = {}
            for metric, value in entry.items():
                if not _is_number(value):
                    raise TypeError(
                        f"`{argument}[{task!r}][{metric!r}]` must be a number. Received: {value!r}"
                    )
                metrics[metric] = float(value)
            out[task] = metrics
        elif _is_number(entry):
            out[task] = {None: float(entry)}
        else:
            raise TypeError(
                f"`{argument}[{task!r}]` must be a number or a dict of metric values. "
                f"Received: {entry!r}"
            )
    return out


def _direction(higher_is_better: Any, task: Any, metric: Any, position: int) -> bool:
    """Looks up whether higher is better for one (task, metric)."""
    hib = higher_is_better
    if isinstance(hib, (bool, np.bool_)):
        return bool(hib)
    if isinstance(hib, Mapping):
        if task in hib:
            value = hib[task]
            if isinstance(value, Mapping):
                if metric not in value:
                    raise ValueError(
                        f"`higher_is_better[{task!r}]` has no entry for metric {metric!r}."
                    )
                value = value[metric]
        elif metric is not None and metric in hib:
            value = hib[metric]
        else:
            where = f"task {task!r}" + ("" if metric is None else f" or metric {metric!r}")
            raise ValueError(f"`higher_is_better` has no entry for {where}.")
    elif isinstance(hib, (Sequence, np.ndarray)) and not isinstance(hib, str):
        if position >= len(hib):
            raise ValueError(
                f"`higher_is_better` has {len(hib)} entries; it needs one per task "
                f"(at least {position + 1})."
            )
        value = hib[position]
    else:
        raise TypeError(
            "`higher_is_better` must be a bool, a dict keyed by task (of bools or of "
            "{metric: bool}) or by metric name, or a sequence of bools. "
            f"Received: higher_is_better={hib!r}"
        )
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"`higher_is_better` entries must be bools; for task {task!r}"
            + ("" if metric is None else f", metric {metric!r}")
            + f" it is {value!r}."
        )
    return bool(value)


def _relative_changes(results, baselines, higher_is_better) -> dict[Any, dict[Any, float]]:
    res = _as_nested(results, "results")
    base = _as_nested(baselines, "baselines")
    if set(res) != set(base):
        raise ValueError(
            "`results` and `baselines` must have the same tasks. Only in results: "
            f"{sorted(map(str, set(res) - set(base)))}; only in baselines: "
            f"{sorted(map(str, set(base) - set(res)))}."
        )
    changes: dict = {}
    for position, (task, metrics) in enumerate(res.items()):
        if set(metrics) != set(base[task]):
            raise ValueError(
                f"Task {task!r}: `results` has metrics {sorted(map(str, metrics))} but "
                f"`baselines` has {sorted(map(str, base[task]))}."
            )
        changes[task] = {}
        for metric, value in metrics.items():
            reference = base[task][metric]
            name = f"task {task!r}" + ("" if metric is None else f", metric {metric!r}")
            if not (math.isfinite(value) and math.isfinite(reference)):
                raise ValueError(
                    f"Non-finite value for {name}: result {value}, baseline {reference}."
                )
            if reference == 0:
                raise ValueError(f"The baseline of {name} is 0; a relative change is undefined.")
            sign = 1.0 if _direction(higher_is_better, task, metric, position) else -1.0
            # |baseline| keeps "positive is better" for negative baselines; for the
            # usual positive metrics it is exactly the published formula.
            changes[task][metric] = sign * (value - reference) / abs(reference)
    return changes


def delta_m_per_task(results, baselines, higher_is_better) -> dict:
    """Per-task relative improvement in percent (the terms that `delta_m` averages).

    Args:
        results: the multi-task model's metrics (see `delta_m`).
        baselines: the single-task baselines, same structure.
        higher_is_better: see `delta_m`.

    Returns:
        `{task: percent}`: for each task the mean over its metrics of
        `(-1)^(0 if higher is better else 1) * (M - M_STL) / |M_STL| * 100`.
        Tasks given as a sequence are keyed by position.

    Raises:
        ValueError, TypeError: as `delta_m`.

    Example:

    >>> per_task = delta_m_per_task({"a": 0.9, "b": 0.5}, {"a": 0.8, "b": 0.4}, True)
    >>> {task: round(value, 6) for task, value in per_task.items()}
    {'a': 12.5, 'b': 25.0}
    """
    changes = _relative_changes(results, baselines, higher_is_better)
    return {task: 100.0 * float(np.mean(list(m.values()))) for task, m in changes.items()}


def delta_m(results, baselines, higher_is_better, average: str = "tasks") -> float:
    """Delta-m in percent: the mean relative improvement over single-task baselines.

    As the DB-MTL paper (and LibMTL): for task t with metrics i = 1..N_t,
    `Delta_t = 1/N_t sum_i (-1)^{s_ti} (M_ti - M_STL,ti) / M_STL,ti`, with
    `s_ti = 0` when higher is better and 1 otherwise, and
    `Delta_m = 100 * 1/T sum_t Delta_t`. Positive is better. The baseline
    enters through its absolute value, which is the published formula for
    the usual positive metrics and keeps the sign convention otherwise.

    Args:
        results: the multi-task model's metrics, as `{task: {metric: value}}`,
            as `{task: value}` (one metric per task) or as a sequence of
            numbers (one task each).
        baselines: the single-task (STL) metrics, same structure, same
            tasks and metrics.
        higher_is_better: a bool for every metric; or a dict keyed by task
            whose values are bools or `{metric: bool}`; or a dict keyed by
            metric name (for example `{"auc": True, "mae": False}`); or a
            sequence of bools, one per task (task keys win over metric
            names).
        average: `"tasks"` (mean over tasks of the per-task mean, DB-MTL /
            LibMTL) or `"metrics"` (mean over all metrics at once, as in
            MTAN and Nash-MTL). They agree when every task has one metric.

    Returns:
        Delta-m in percent, a float.

    Raises:
        ValueError: for different tasks or metrics in `results` and
            `baselines`, a missing `higher_is_better` entry, a zero baseline,
            a non-finite value, or an unknown `average`.
        TypeError: for inputs of the wrong type.

    Example:

    >>> from keras_mtl.metrics import delta_m
    >>> results = {"seg": {"miou": 0.55, "pix_acc": 0.75}, "depth": {"abs_err": 0.40}}
    >>> stl = {"seg": {"miou": 0.50, "pix_acc": 0.75}, "depth": {"abs_err": 0.50}}
    >>> higher = {"miou": True, "pix_acc": True, "abs_err": False}
    >>> round(delta_m(results, stl, higher), 6)  # (mean(10, 0) + 20) / 2
    12.5
    >>> round(delta_m(results, stl, higher, average="metrics"), 6)  # (10 + 0 + 20) / 3
    10.0

    References:
        Lin et al., "Dual-Balancing for Multi-Task Learning", 2023.
        Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR 2019.
    """
    if average not in _AVERAGES:
        raise ValueError(
            f"Received an invalid value for `average`, expected one of {_AVERAGES}. "
            f"Received: average={average!r}"
        )
    changes = _relative_changes(results, baselines, higher_is_better)
    if average == "tasks":
        per_task = [np.mean(list(m.values())) for m in changes.values()]
        return 100.0 * float(np.mean(per_task))
    return 100.0 * float(np.mean([v for m in changes.values() for v in m.values()]))
