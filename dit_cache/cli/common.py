"""What every sub-command shares: the console and the usage error (one line, exit 2)."""
from __future__ import annotations

from rich.console import Console

console = Console()


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit code 2."""
