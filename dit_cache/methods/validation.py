"""Checks shared by the method configs' `__post_init__` (one clear error per bad field)."""
from __future__ import annotations

import math


def check_int(name: str, value, minimum: int = 1) -> None:
    """`value` is None or an integer (not a bool) >= `minimum`."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_required_int(name: str, value) -> None:
    if value is None:
        raise ValueError(f"{name} must be an integer >= 1, got None")
    check_int(name, value)


def is_timestep(value) -> bool:
    """A real number (an int or float, not a bool, not NaN); +-inf is allowed (a bound that
    never binds)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def check_timestep(name: str, value) -> None:
    """`value` is None or a timestep (see `is_timestep`)."""
    if value is not None and not is_timestep(value):
        raise ValueError(f"{name} must be a number (a timestep), got {value!r}")


def check_window(name: str, window) -> tuple[float, float] | None:
    """A (low, high) timestep window, open at both ends; returns it as floats."""
    if window is None:
        return None
    try:
        low, high = window
        if not all(is_timestep(v) for v in (low, high)):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of timesteps, got {window!r}") from None
    if low == high:
        raise ValueError(
            f"empty {name} ({low}, {high}): reuse happens only strictly inside low < t < high, "
            "so low must be below high"
        )
    if low > high:
        raise ValueError(f"reversed {name} ({low}, {high}): give it as (low, high), e.g. (100, 800)")
    return float(low), float(high)
