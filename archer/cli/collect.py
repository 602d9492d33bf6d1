"""`archer collect`: one table of runs and sweeps (settings that differ, timings, memory, rewards,
influence quality), as a Rich table, CSV, Markdown or JSON, with optional plots."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

EPILOG = (
    "Examples:\n\n"
    "  archer collect runs/abl\n\n"
    "  archer collect runs/abl --format markdown --out results.md\n\n"
    "  archer collect runs/ --format csv --metrics 'actor/*' --metrics rollout/entropy_mean\n\n"
    "  archer collect runs/abl --plot plots/ --plot-terminal\n\n"
    "PATHs are run directories, sweep directories (with sweep.json) or folders holding them. "
    "Columns and quality metrics: docs/ablate-collect.md"
)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    markdown = "markdown"
    json = "json"


SUFFIX_FORMAT = {
    ".csv": Format.csv,
    ".md": Format.markdown,
    ".markdown": Format.markdown,
    ".json": Format.json,
}


def collect(
    paths: list[Path] = typer.Argument(..., help="Run directories, sweep directories or folders to search."),
    fmt: Format | None = typer.Option(
        None,
        "--format",
        "-f",
        help="table (default on screen), csv, markdown or json; with --out, taken from its suffix.",
    ),
    metrics: list[str] | None = typer.Option(
        None,
        "--metrics",
        "-m",
        help="Extra metric columns by name or glob (final value), e.g. 'actor/*'. Repeatable.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file instead of the screen."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write PNG plots into this directory (needs the plot extra)."
    ),
    plot_terminal: bool = typer.Option(
        False, "--plot-terminal", help="Also draw small plots in the terminal (plotext)."
    ),
    reference: str | None = typer.Option(
        None, "--reference", help="Run to correlate influence with (default: the first run with influence)."
    ),
) -> None:
    """Collect runs into one result table: differing settings, timings, memory, rewards, influence quality."""
    from rich.markup import escape

    from archer.cli._console import out as console
    from archer.cli._console import warn
    from archer.core.collect import build_table
    from archer.core.collect.formats import render, to_rich
    from archer.core.run import atomic_write_text
    from archer.errors import UsageError

    if plot is not None or plot_terminal:  # fail before reading anything when the libraries are missing
        from archer.core.collect.plots import require

        if plot is not None:
            require("matplotlib")
        if plot_terminal:
            require("plotext")

    chosen = fmt or (SUFFIX_FORMAT.get(out.suffix.lower(), Format.table) if out is not None else Format.table)
    t = build_table(list(paths), metrics or [], reference=reference)
    for w in t.warnings:
        warn(w)
    if not t.rows:
        raise UsageError(
            f"no runs found in {', '.join(map(str, paths))}",
            hint=(
                "pass run directories (with config.yaml), sweep directories (with sweep.json) or folders "
                "holding them"
            ),
        )

    if chosen is Format.table:
        title = f"{len(t.rows)} run(s)" + (f" · spearman vs {t.reference}" if t.reference else "")
        table = to_rich(t, title=title)
        if out is not None or not console().is_terminal:
            # a file or a pipe gets every row on one line, however wide (a terminal wraps instead)
            from archer.core.sweep.display import render_text

            text = render_text(table)
            if out is not None:
                atomic_write_text(out, text)
            else:
                typer.echo(text, nl=False)
        else:
            console().print(table)
    else:
        text = render(t, chosen.value)
        if out is not None:
            atomic_write_text(out, text)
        else:
            typer.echo(text, nl=False)
    if out is not None:
        console().print(f"wrote {escape(str(out))} ({chosen.value}, {len(t.rows)} run(s))")

    if plot is not None:
        from archer.core.collect.plots import write_pngs

        files = write_pngs(t, plot)
        if files:
            console().print("plots: " + ", ".join(escape(str(f)) for f in files))
        else:
            warn("nothing to plot: no run has per-step metrics")
    if plot_terminal:
        from archer.core.collect.plots import terminal_plots

        if not terminal_plots(t, console()):
            warn("nothing to plot in the terminal: no run has per-step metrics")
