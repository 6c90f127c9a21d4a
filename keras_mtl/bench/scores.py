"""Test-set scores of the benchmark, computed with Keras metrics."""

from __future__ import annotations

import math

import keras
import numpy as np

METRICS = {
    # 10,000 thresholds: AUC accurate to about 1e-4, enough to compare with published values.
    "auc": lambda: keras.metrics.AUC(num_thresholds=10000),
    "accuracy": lambda: keras.metrics.SparseCategoricalAccuracy(),
    "binary_accuracy": lambda: keras.metrics.BinaryAccuracy(),
    "mse": lambda: keras.metrics.MeanSquaredError(),
    "mae": lambda: keras.metrics.MeanAbsoluteError(),
}


def score(metric: str, y_true, y_pred) -> float:
    """Scores predictions with a named metric, skipping examples whose label is NaN.

    A score that the labels cannot define is NaN, not a number that looks
    like a result: AUC when the labels hold a single class (no ranking of
    positives above negatives exists), and any metric when no example has a
    label.

    Args:
        metric: a key of `METRICS`.
        y_true: labels.
        y_pred: predictions.

    Returns:
        The metric value as a float, or NaN (see above).

    Raises:
        ValueError: for an unknown metric.

    Example:

    >>> import numpy as np
    >>> score("auc", np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    >>> score("auc", np.array([1, 1, 1]), np.array([0.1, 0.4, 0.35]))
    nan
    """
    if metric not in METRICS:
        raise ValueError(
            f"Unknown metric {metric!r}; expected one of {sorted(METRICS)}. "
            f"Received: metric={metric!r}"
        )
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if np.issubdtype(y_true.dtype, np.floating):
        keep = ~np.isnan(y_true.reshape(len(y_true), -1)).any(axis=1)
        y_true, y_pred = y_true[keep], y_pred[keep]
    # Keras returns 0.0 for both, which Δm would then divide by or compare with.
    if len(y_true) == 0 or (metric == "auc" and len(np.unique(y_true)) < 2):
        return math.nan
    m = METRICS[metric]()
    m.update_state(y_true, y_pred)
    return round(float(m.result()), 6)
