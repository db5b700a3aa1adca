"""Schedule files: a calibrated per-step plan as JSON, with what it was made for.

``patch(model, schedule="sched.json")`` reads one; `dit_cache.calibrate` writes them. The file
names the model class and config hash, the scheduler class and config, the step count and
timesteps it was calibrated on: `patch` refuses another model, a pipeline with another
scheduler class, and a run with other timesteps, each with an error that says to recalibrate.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._common.files import atomic_write
from .methods.plan import StepPlanConfig
from .version import __version__

FORMAT = "dit-cache-schedule"
FORMAT_VERSION = 1


def is_schedule_file(schedule: Any) -> bool:
    """Whether `schedule` names a schedule file (a path ending in .json) rather than a preset."""
    return isinstance(schedule, Path) or (isinstance(schedule, str) and schedule.endswith(".json"))


def schedule_record(config: StepPlanConfig, *, scheduler=None, calibration: dict | None = None,
                    flop_ratio: float | None = None) -> dict[str, Any]:
    """The JSON object of a plan (what `save_schedule` writes)."""
    sched_config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")} if scheduler is not None else None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dit_cache_version": __version__,
        "model_class": config.model_class,
        "config_hash": config.config_hash,
        "scheduler_class": config.scheduler_class,
        "scheduler_config": json.loads(json.dumps(sched_config, default=str)) if sched_config is not None else None,
        "num_inference_steps": len(config.plan),
        "timesteps": list(config.timesteps) if config.timesteps is not None else None,
        "plan": list(config.plan),
        "long_skips": config.long_skips,
        "flop_ratio": flop_ratio,
        "ideal_speedup": (1.0 / flop_ratio) if flop_ratio else None,
        "calibration": calibration or {},
    }


def save_schedule(path, config: StepPlanConfig, **record) -> Path:
    """Write `config` (+ `schedule_record` fields) to `path` atomically; returns the path."""
    path = Path(path)
    text = json.dumps(schedule_record(config, **record), indent=1) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def read_schedule_record(path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"schedule file {path} does not exist (make one with ditcache calibrate ... --out {path})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"schedule file {path} is not valid JSON ({err}); rewrite it with ditcache calibrate") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dit-cache schedule file (no \"format\": \"{FORMAT}\")")
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has schedule format version {record.get('format_version')!r}; this dit-cache "
                         f"reads version {FORMAT_VERSION}: recalibrate with this version")
    return record


def load_schedule(path) -> StepPlanConfig:
    """The plan of a schedule file, as a config for `patch`."""
    record = read_schedule_record(path)
    try:
        return StepPlanConfig(
            plan=record["plan"], timesteps=record.get("timesteps"), model_class=record.get("model_class"),
            config_hash=record.get("config_hash"), scheduler_class=record.get("scheduler_class"),
            long_skips=bool(record.get("long_skips", False)), source=str(path),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"schedule file {path} is malformed: {err}") from None
