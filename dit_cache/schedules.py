"""Named schedules: the preset table (`patch(model, "skip-dit-2")`) and name -> config.

A preset is a config object; a step's decision depends only on its index and timestep (never
on the data), so every rank of a multi-GPU run takes the same decision without communicating."""
from __future__ import annotations

import difflib

from .methods import BUILTIN_PRESETS
from .schedule_file import is_schedule_file, load_schedule

#: Preset name -> config (each method module names its own presets). Also feeds the CLI choices.
PRESETS: dict[str, object] = dict(BUILTIN_PRESETS)


def register_preset(name: str, config: object) -> None:
    PRESETS[name] = config


def presets() -> dict[str, object]:
    """Every preset name with its config."""
    return dict(PRESETS)


def resolve_schedule(schedule) -> object:
    """A preset name, a schedule file (.json) or a config object -> config object, with a clear
    error for bad names."""
    if is_schedule_file(schedule):
        return load_schedule(schedule)
    if isinstance(schedule, str):
        if schedule in PRESETS:
            return PRESETS[schedule]
        close = difflib.get_close_matches(schedule, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown schedule preset {schedule!r}.{hint} Valid presets: {', '.join(PRESETS)}")
    if schedule is None:
        return PRESETS["none"]
    return schedule
