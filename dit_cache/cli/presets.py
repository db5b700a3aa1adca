"""`ditcache presets`: the cache presets and their settings."""
from __future__ import annotations

import dataclasses

from rich.table import Table

from .common import COMMANDS, console


def _config_str(config) -> str:
    if not dataclasses.is_dataclass(config):
        return ""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    shown = {k: v for k, v in fields.items() if v is not None}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "backbone defaults"


def cmd_presets(args) -> int:
    from ..schedules import presets

    table = Table(title="dit-cache presets")
    table.add_column("preset")
    table.add_column("config")
    table.add_column("settings")
    for name, config in presets().items():
        table.add_row(name, type(config).__name__, _config_str(config))
    console.print(table)
    return 0


def add_parser(subparsers) -> None:
    subparsers.add_parser("presets", help=COMMANDS["presets"]).set_defaults(func=cmd_presets)
