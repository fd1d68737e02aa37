"""What every command of the CLI shares: the stderr console and the one-line error exit."""

from __future__ import annotations

import typer
from rich.console import Console

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(code: int, *messages: str) -> None:
    """Print `error: <message>` lines on stderr and exit with `code` (no traceback)."""
    for message in messages:
        err_console.print(f"error: {message}", markup=False)
    raise typer.Exit(code)
