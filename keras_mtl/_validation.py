"""Validation of constructor arguments shared by layers, balancers, callbacks and datasets.

Python and NumPy scalars are both accepted (`numbers.Real` / `numbers.Integral`,
never `bool`) and returned as plain Python `float` / `int`, so that configs
stay JSON-serialisable. Errors name the argument, what was expected and the
value received.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def invalid_value(name: str, value, expected: str) -> ValueError:
    """The error for an invalid argument `name=value` (to raise).

    Example:

    >>> invalid_value("rate", -1, "a float in [0, 1)")
    ValueError('Received an invalid value for `rate`, expected a float in [0, 1). Received: rate=-1')
    """
    return ValueError(
        f"Received an invalid value for `{name}`, expected {expected}. Received: {name}={value!r}"
    )


def is_number(value) -> bool:
    """Whether `value` is a finite real scalar (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value) -> bool:
    """Whether `value` is an integer scalar (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_number(name: str, value, expected: str, invalid=None) -> float:
    """Validates a numeric argument: a finite real scalar, not a bool.

    Args:
        name: the argument's name, for the message.
        value: the value received.
        expected: what was expected, e.g. `"a positive float"`.
        invalid: optional predicate that is true for finite values that are
            still out of range.

    Returns:
        `value` as a Python float.

    Raises:
        ValueError: naming the argument, what was expected and the value.

    Example:

    >>> import numpy as np
    >>> check_number("beta", np.float32(0.5), "a number in (0, 1]", lambda v: not 0 < v <= 1)
    0.5
    """
    if not is_number(value) or (invalid is not None and invalid(value)):
        raise invalid_value(name, value, expected)
    return float(value)


def check_integer(name: str, value, expected: str, invalid=None) -> int:
    """Validates an integer argument: an integral scalar, not a bool or a float.

    Args:
        name: the argument's name, for the message.
        value: the value received.
        expected: what was expected, e.g. `"a positive integer"`.
        invalid: optional predicate that is true for integers out of range.

    Returns:
        `value` as a Python int.

    Raises:
        ValueError: naming the argument, what was expected and the value.

    Example:

    >>> import numpy as np
    >>> check_integer("num_experts", np.int64(4), "a positive integer", lambda v: v < 1)
    4
    """
    if not is_integer(value) or (invalid is not None and invalid(value)):
        raise invalid_value(name, value, expected)
    return int(value)


def check_bool(name: str, value) -> bool:
    """Validates a boolean argument (a Python or NumPy bool); returns a Python bool.

    Example:

    >>> check_bool("batch_norm", True)
    True
    """
    if not isinstance(value, bool | np.bool_):
        raise invalid_value(name, value, "a bool")
    return bool(value)
