"""ditcache: Skip-Cache, FORA and PAB for diffusers DiTs - benchmark them side by side, draw
samples from the model zoo, fine-tune long-skip adapters, convert research checkpoints."""
from __future__ import annotations

import argparse
import importlib
import sys

from rich.markup import escape

from ..version import __version__
from .common import COMMANDS, Parser, UsageError, console


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s own arguments are built (importing its module), so
    `ditcache --help`, `--version` and every other command start without loading torch."""
    parser = Parser(prog="ditcache", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ditcache {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if name == command:
            importlib.import_module(f".{name}", __package__).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; bad input prints one line and returns 2 (argparse's errors too)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(_command(argv)).parse_args(argv)
        return args.func(args)
    except (UsageError, ValueError) as err:
        text = " ".join(str(err).split()) or type(err).__name__  # one line, never wrapped
        console.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)
        return 2
