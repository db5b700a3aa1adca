"""`ditcache` command line. It only parses arguments; the work is done by the library."""
from __future__ import annotations

import argparse

from . import bench, convert, demo, finetune, presets, schedule
from .common import UsageError, console

# One module per sub-command, each exposing `add_parser(subparsers)`; the parser it adds sets
# `func`. The order is the order of `ditcache --help`.
SUBCOMMAND_MODULES = (presets, schedule, demo, convert, bench, finetune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMAND_MODULES:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)  # one line, never wrapped
        return 2
