"""Checks shared by the method configs' `__post_init__` (one clear error per bad field)."""
from __future__ import annotations


def check_int(name: str, value, minimum: int = 1) -> None:
    """`value` is None or an integer (not a bool) >= `minimum`."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_required_int(name: str, value) -> None:
    if value is None:
        raise ValueError(f"{name} must be an integer >= 1, got None")
    check_int(name, value)


def check_window(name: str, window) -> tuple[float, float] | None:
    """A (low, high) timestep window, open at both ends; returns it as floats."""
    if window is None:
        return None
    try:
        low, high = window
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (low, high)):
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
