"""`archer data`: synthesise tasks and prepare datasets (filled in by the data module)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Make and prepare training data (synthetic tasks, DAPO-Math).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
