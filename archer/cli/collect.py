"""`archer collect`: one table of runs and sweeps (settings that differ, timings, memory, rewards,
influence quality), as a Rich table, CSV, Markdown or JSON, with optional plots."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

EPILOG = (
    "Examples:\n\n"
    "  archer collect runs/abl\n\n"
    "  archer collect runs/abl --sort=-auc --columns default,rollout_s,update_s\n\n"
    "  archer collect runs/abl --columns all          (every column, as in the files)\n\n"
    "  archer collect runs/abl --format markdown --out results.md\n\n"
    "  archer collect runs/ --format csv --metrics 'actor/*' --metrics rollout/entropy_mean\n\n"
    "  archer collect runs/abl --plot plots/ --plot-terminal\n\n"
    "PATHs are run directories, sweep directories (with sweep.json) or folders holding them. "
    "On screen a short set of columns (run, the settings that differ, reward and val accuracy "
    "start→end, s/step, influence quality); CSV, Markdown and JSON hold every column. "
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
    columns: list[str] | None = typer.Option(
        None,
        "--columns",
        "-c",
        metavar="COLS",
        help="Columns to show: names or globs, comma-separated or repeated; 'default' is the short "
        "screen set, 'all' every column. Default: short on screen, all in csv/markdown/json.",
    ),
    sort: str | None = typer.Option(
        None,
        "--sort",
        "-s",
        metavar="COL",
        help="Sort runs by this column; -COL sorts descending (--sort=-auc).",
    ),
) -> None:
    """Collect runs into one result table: differing settings, timings, memory, rewards, influence quality."""
    from rich.markup import escape

    from archer.cli._console import out as console
    from archer.cli._console import warn
    from archer.cli.collect_table import to_rich
    from archer.core.collect import build_table
    from archer.core.collect.columns import project, resolve, sort_rows
    from archer.core.collect.formats import render
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

    screen = chosen is Format.table
    full = sort_rows(t, sort)
    t = project(full, resolve(full, columns, screen), screen)
    if screen:
        title = f"{len(t.rows)} run(s)" + (f" · spearman vs {t.reference}" if t.reference else "")
        table = to_rich(t, title=title)
        notes = _reasons(full) if "reason" not in t.columns else []
        if notes:
            from rich.console import Group
            from rich.text import Text

            table = Group(table, *(Text(n, overflow="fold") for n in notes))
        if out is not None or not console().is_terminal:
            # a file or a pipe gets every row on one line, however wide (a terminal wraps instead)
            from archer.cli._console import render_text

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

        files = write_pngs(full, plot)
        if files:
            console().print("plots: " + ", ".join(escape(str(f)) for f in files))
        else:
            warn("nothing to plot: no run has per-step metrics")
    if plot_terminal:
        from archer.cli.collect_plots import terminal_plots

        if not terminal_plots(full, console()):
            warn("nothing to plot in the terminal: no run has per-step metrics")


def _reasons(t) -> list[str]:
    """One line per run that did not finish, saying why (the short view has no reason column)."""
    return [f"  {r['run']}: {r['status']}, {r['reason']}" for r in t.rows if r.get("reason")]
