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


def check_positive_int(name: str, value, allow_none: bool = False) -> int | None:
    """`check_integer` for a positive integer (or `None` when `allow_none`).

    Example:

    >>> check_positive_int("num_tasks", np.int64(3)), check_positive_int("cap", None, allow_none=True)
    (3, None)
    """
    if allow_none and value is None:
        return None
    expected = "a positive integer or None" if allow_none else "a positive integer"
    return check_integer(name, value, expected, lambda v: v < 1)


def check_seed(value) -> int | None:
    """A random seed: an integer or `None` (unseeded).

    Example:

    >>> check_seed(np.int64(7)), check_seed(None)
    (7, None)
    """
    return None if value is None else check_integer("seed", value, "an integer or None")


def check_numpy_seed(value, name: str = "seed") -> int:
    """A seed of `numpy.random.default_rng`: a non-negative integer.

    NumPy rejects negative seeds with a message that does not name the
    argument, so they are refused here first.

    Args:
        value: the value received.
        name: the argument's name, for the message.

    Returns:
        `value` as a Python int.

    Raises:
        ValueError: naming the argument, what was expected and the value.

    Example:

    >>> check_numpy_seed(np.int64(7))
    7
    >>> check_numpy_seed(-1)
    Traceback (most recent call last):
    ...
    ValueError: Received an invalid value for `seed`, expected a non-negative integer. Received: seed=-1
    """
    return check_integer(name, value, "a non-negative integer", lambda v: v < 0)


def check_units(name: str, value) -> tuple[int, ...]:
    """Layer widths: a positive integer or a non-empty sequence of them, as a tuple.

    Example:

    >>> check_units("units", 8), check_units("units", [np.int64(4), 2])
    ((8,), (4, 2))
    """
    units = (value,) if is_integer(value) else value
    try:
        units = tuple(units)
    except TypeError:
        units = ()
    if not units or any(not is_integer(u) or u < 1 for u in units):
        raise invalid_value(name, value, "a positive integer or a non-empty sequence of them")
    return tuple(int(u) for u in units)


def check_rate(name: str, value) -> float:
    """A dropout rate: a float in `[0, 1)`.

    Example:

    >>> check_rate("dropout", 0.1)
    0.1
    """
    return check_number(name, value, "a float in [0, 1)", lambda v: not 0 <= v < 1)


def check_bool(name: str, value) -> bool:
    """Validates a boolean argument (a Python or NumPy bool); returns a Python bool.

    Example:

    >>> check_bool("batch_norm", True)
    True
    """
    if not isinstance(value, bool | np.bool_):
        raise invalid_value(name, value, "a bool")
    return bool(value)
