"""Calibrated schedules as bench methods.

- ``calibrate`` (options ``speedup`` (2.0) or ``max_error``, ``max_age`` (4), ``cost``
  (``flops``, or ``latency``: the speedup counted in measured call time),
  ``calibration_seeds`` (default 1000000/1000001, which ``--seeds`` may not overlap)): runs
  `dit_cache.calibrate` on the benchmarked model, scheduler and step count first, then measures
  the plan it returns like any other method. A plan is calibrated once per runner and options
  (interleaved rounds reinstall it without calibrating again).
- ``calibrated``: a zoo model's shipped schedule (``dit_cache.zoo.schedule_path``).
- a schedule file (``PATH.json``, from ``ditcache calibrate``).
"""
from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from .._common.options import format_value
from ..calibration.api import CALIBRATION_SEEDS
from ..schedule_file import is_schedule_file
from .errors import BenchInputError

if TYPE_CHECKING:
    from .specs import MethodSpec

CALIBRATE = "calibrate"
CALIBRATED = "calibrated"
CALIBRATE_OPTIONS = ("speedup", "max_error", "max_age", "cost", "calibration_seeds")
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # runner -> {options key: Calibration}


def is_schedule_method(name: str) -> bool:
    return name in (CALIBRATE, CALIBRATED) or is_schedule_file(name)


def check_schedule_method(spec: "MethodSpec") -> None:
    """BenchInputError for a missing file or bad ``calibrate`` options, before any work."""
    if is_schedule_file(spec.name) and not Path(spec.name).is_file():
        raise BenchInputError(f"schedule file {spec.name} does not exist (make one with ditcache calibrate --out ...)")
    if spec.name != CALIBRATE:
        if spec.options:
            raise BenchInputError(f"{spec.label}: a schedule takes no options")
        return
    unknown = sorted(set(spec.options) - set(CALIBRATE_OPTIONS))
    if unknown:
        raise BenchInputError(f"{spec.label}: unknown option(s) {unknown}; valid: {', '.join(CALIBRATE_OPTIONS)}")
    if "speedup" in spec.options and "max_error" in spec.options:
        raise BenchInputError(f"{spec.label}: give speedup or max_error, not both")
    calibration_seeds(spec)


#: bench methods that calibrate before they run, on `calibration_seeds` (what the error names)
CALIBRATING = {CALIBRATE: "", "diffusers-magcache": "MagCache "}


def calibration_seeds(spec: "MethodSpec") -> tuple[int, ...]:
    """The ``calibration_seeds`` option of a calibrating method (default `CALIBRATION_SEEDS`)."""
    value = spec.options.get("calibration_seeds", CALIBRATION_SEEDS)
    seeds = value if isinstance(value, tuple) else (value,)
    if not seeds or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and float(s).is_integer()
                            and 0 <= s < 2**63 for s in seeds):
        raise BenchInputError(f"{spec.name}: calibration_seeds must be integer seeds like 1000000/1000001, "
                              f"got {format_value(value)!r}")
    return tuple(int(s) for s in seeds)


def check_calibration_seeds(specs: list["MethodSpec"], seeds) -> None:
    """BenchInputError when a calibrating method would calibrate on an evaluation seed."""
    for spec in specs:
        if spec.name in CALIBRATING:
            shared = sorted(set(calibration_seeds(spec)) & set(seeds))
            if shared:
                raise BenchInputError(
                    f"{spec.label}: seed(s) {shared} are both {CALIBRATING[spec.name]}calibration and evaluation "
                    "seeds; choose other --seeds or calibration_seeds=A/B"
                )


def calibrated_plan(spec: "MethodSpec", runner):
    """The `Calibration` for a ``calibrate`` spec on `runner` (computed once per runner)."""
    from ..calibration.runner import calibrate_runner

    plans = _PLANS.setdefault(runner, {})
    key = (runner.s.steps, tuple(sorted((k, format_value(v)) for k, v in spec.options.items())))
    if key not in plans:
        options = dict(spec.options)
        seeds = calibration_seeds(spec)
        options.pop("calibration_seeds", None)
        if "max_error" not in options:
            options.setdefault("speedup", 2.0)
        else:
            options["speedup"] = None
        try:
            plans[key] = calibrate_runner(runner, seeds=seeds, progress=False, **options)
        except (TypeError, ValueError) as err:
            raise BenchInputError(f"{spec.label}: {err}") from None
    return plans[key]
