"""Shared Rich consoles and small output helpers for the thin CLI commands."""

from __future__ import annotations

import sys
from functools import cache
from typing import Any


@cache
def out() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


@cache
def err() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_yaml(text: str) -> None:
    """YAML to stdout: highlighted on a terminal, verbatim otherwise (so it pipes into files)."""
    if sys.stdout.isatty():
        from rich.syntax import Syntax

        out().print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def warn(message: str) -> None:
    from rich.markup import escape

    err().print(f"[yellow]Warning:[/yellow] {escape(message)}")


def note(message: str) -> None:
    from rich.markup import escape

    err().print(f"[dim]{escape(message)}[/dim]")


def render_text(renderable: Any) -> str:
    """A Rich renderable as plain text at its natural width, for files and pipes (a fixed 80
    columns would fold every table row into several lines)."""
    import io

    from rich.console import Console

    width = max(80, Console(width=10_000, file=io.StringIO()).measure(renderable).maximum)
    console = Console(record=True, width=width, file=io.StringIO(), highlight=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
