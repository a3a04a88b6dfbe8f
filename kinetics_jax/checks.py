"""The package's integer helpers (jax-free: the cost model and policies use them): the one rule for integer
arguments, and `ceil_div`."""

from __future__ import annotations

import operator

import numpy as np


def _bounds_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is None:
        return "" if maximum is None else f" <= {maximum}"
    return f" >= {minimum}" if maximum is None else f" in [{minimum}, {maximum}]"


def checked_int(value: object, name: str, *, minimum: int | None = None, maximum: int | None = None,
                why: str | None = "") -> int:
    """`value` as a Python int, or ValueError naming `name`.

    The rule for every integer argument of the package (request sizes, seeds, stream ids, policy fields): any
    integral value that is not a bool is accepted and converted to int (int, numpy integers, 0-d integer arrays:
    what `operator.index` takes); bools (True is not 1 sample), floats (even 4.0), strings and None are refused,
    and so is a value outside [minimum, maximum] (either bound optional). `why` is appended to the rule in the
    message, e.g. "num_samples must be an integer >= 1, got 2.5, a float".
    """
    rule = f"{name} must be an integer{_bounds_text(minimum, maximum)}" + (f" ({why})" if why else "")
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{rule}, got {value!r}, a {type(value).__name__}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{rule}, got {number}")
    return int(number)


def ceil_div(a, b):
    """ceil(a / b) for integers, Python, numpy or jnp (e.g. the pages that hold `a` tokens at `b` per page)."""
    return -(-a // b)
