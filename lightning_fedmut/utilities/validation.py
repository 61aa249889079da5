"""Eager argument checks whose messages name the argument, the expected and the received value."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[low, high]``; raise a message naming ``name`` otherwise.

    Any integer is accepted (``int``, numpy's ``int64``, ``uint8``, ...) and returned as a plain ``int``;
    booleans (Python's or numpy's) are refused, as are floats, even whole ones.

    Examples:
        >>> import numpy as np
        >>> check_int("rounds", 3, low=1), check_int("batch_size", np.int64(10), low=1)
        (3, 10)
        >>> check_int("rounds", 0, low=1)
        Traceback (most recent call last):
        ...
        ValueError: Expected `rounds` to be an integer >= 1, got 0.
        >>> check_int("rounds", True)
        Traceback (most recent call last):
        ...
        TypeError: Expected `rounds` to be an integer, got True of type bool.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected `{name}` to be an integer, got {value!r} of type {type(value).__name__}.")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"Expected `{name}` to be an integer >= {low}, got {value}.")
    if high is not None and value > high:
        raise ValueError(f"Expected `{name}` to be an integer <= {high}, got {value}.")
    return value


def check_real(
    name: str, value: Any, low: float | None = None, high: float | None = None, high_open: bool = False,
    low_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite real in range; raise a message naming ``name`` otherwise.

    Python and numpy numbers are accepted (``np.float32``, ``np.int64``, ...); booleans are refused.

    Examples:
        >>> import numpy as np
        >>> check_real("alpha", np.float32(0.5), low=0.0)
        0.5
        >>> check_real("acceleration", 1.0, low=0.0, high=1.0, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: Expected `acceleration` in [0.0, 1.0), got 1.0.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected `{name}` to be a real number, got {value!r} of type {type(value).__name__}.")
    value = float(value)
    bad = value != value or value in (float("inf"), float("-inf"))
    bad = bad or (low is not None and (value <= low if low_open else value < low))
    bad = bad or (high is not None and (value >= high if high_open else value > high))
    if bad:
        lo = "-inf" if low is None else repr(float(low))
        hi = "inf" if high is None else repr(float(high))
        opening = "(" if low_open or low is None else "["
        raise ValueError(f"Expected `{name}` in {opening}{lo}, {hi}{')' if high_open or high is None else ']'}, got {value}.")
    return value
