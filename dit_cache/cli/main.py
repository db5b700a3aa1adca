"""`ditcache` command line. It only parses arguments; the work is done by the library."""
from __future__ import annotations

import argparse

from rich.markup import escape

from . import bench, convert, demo, finetune, presets, sample, schedule
from .common import Parser, UsageError, console

# One module per sub-command, each exposing `add_parser(subparsers)`; the parser it adds sets
# `func`. The order is the order of `ditcache --help`.
SUBCOMMAND_MODULES = (presets, schedule, demo, sample, convert, bench, finetune)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ditcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMAND_MODULES:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; bad input prints one line and returns 2 (argparse's errors too)."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, ValueError) as err:
        text = " ".join(str(err).split()) or type(err).__name__  # one line, never wrapped
        console.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)
        return 2
