"""What every sub-command shares: the console, the usage error (one line, exit 2), the parser
that turns argparse's own errors into usage errors, and the checked option types (a count, a
finite number in a range, a device), so bad numbers are refused while the command line is
parsed, before any work starts."""
from __future__ import annotations

import argparse
import math

from rich.console import Console

console = Console()

#: The sub-commands (each is the module of that name in this package) and their one-line help,
#: in the order `ditcache --help` lists them.
COMMANDS = {
    "presets": "list the cache presets and their settings",
    "schedule": "print which steps a preset computes in full (F) and which it takes from cache (c)",
    "demo": "patch a tiny pipeline and show what Skip-Cache skips",
    "sample": "draw digits from a zoo model into a PNG grid (mnist-latte: a GIF)",
    "convert": "convert an original DiT / Skip-DiT / Latte-skip checkpoint to diffusers (+ adapters)",
    "bench": "latency, FLOPs, memory and fidelity of cache methods, side by side",
    "calibrate": "calibrate a per-step cache schedule for a model, step count and speedup (writes JSON)",
    "finetune": "train long-skip adapters / a model on your data (see also torchrun)",
}


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with errors raised as `UsageError` (one line) instead of usage + exit."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def count(minimum: int = 1, maximum: int | None = None):
    """An argparse type: an integer >= `minimum` (and < `maximum` when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum or (maximum is not None and value >= maximum):
            bound = f">= {minimum}" + (f" and < {maximum}" if maximum is not None else "")
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value

    parse.__name__ = "count"
    return parse


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, words: dict | None = None):
    """An argparse type: a finite float in [low, high] (``low_open``/``high_open``: exclusive);
    `words` maps accepted words (any case, e.g. ``{"none": None}``) to their values."""
    words = {k.lower(): v for k, v in (words or {}).items()}
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    want = "a number" + (f" {lo}" if lo else "") + (" and" if lo and hi else "") + (f" {hi}" if hi else "")
    if words:
        want += " or " + " / ".join(repr(w) for w in words)

    def parse(text: str):
        if text.strip().lower() in words:
            return words[text.strip().lower()]
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        ok = math.isfinite(value)
        ok = ok and (low is None or (value > low if low_open else value >= low))
        ok = ok and (high is None or (value < high if high_open else value <= high))
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def device(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda``, ``cuda:N`` or ``meta`` (availability is checked by the command)."""
    from .._common.options import DEVICE_NAME

    if not DEVICE_NAME.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or meta, got {text!r}")
    return text.strip()
