"""`archer trace info|export|import-npz`: look inside a trace, dump a step, convert old traces."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer

from archer.cli._console import err, out, warn

app = typer.Typer(
    help="Inspect, export and convert per-token traces.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples:  archer trace info runs/quickstart  ·  "
    "archer trace export runs/quickstart --step 3 --format csv --out step3.csv  ·  "
    "archer trace export runs/quickstart --step 3 --tokens --format jsonl | head  ·  "
    "archer trace import-npz output/Archer2.0/MyRun runs/myrun-imported/trace",
)


class Format(str, Enum):
    csv = "csv"
    jsonl = "jsonl"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


@app.command(
    "info", epilog="Examples:  archer trace info runs/quickstart  ·  archer trace info runs/x/trace --json"
)
def info(
    path: Path = typer.Argument(..., help="A run directory (with trace/) or a trace directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Steps, rows, tokens, columns, sizes on disk, schema version and run metadata of a trace."""
    from archer.core.trace.stats import describe

    d = describe(path)
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    span = f"{d['first_step']}..{d['last_step']}" if d["steps"] else "none yet"
    t.add_row("trace", Text(d["trace"]))
    t.add_row("schema", f"v{d['schema_version']} ({d['format'] or 'archer-trace'})")
    t.add_row("steps", f"{d['steps']} ({span})")
    t.add_row("responses", f"{d['responses']:,}  (with influence: {d['influence_rows']:,})")
    t.add_row("tokens", f"{d['tokens']:,}")
    t.add_row("on disk", f"{_size(d['bytes_total'])} ({_size(d['bytes_steps'])} in step files)")
    cols = ", ".join(c["name"] for c in d["columns"]) or "(no step file yet)"
    t.add_row("columns", Text(f"{len(d['columns'])}: {cols}"))
    out().print(t)
    if d["summary"]:
        s = Table(title="summary.json", title_justify="left", show_header=False, box=None)
        s.add_column(style="cyan")
        s.add_column(overflow="fold")
        for k, v in d["summary"].items():
            s.add_row(Text(str(k)), Text(json.dumps(v, default=str) if not isinstance(v, str) else v))
        out().print(s)
    for w in d["warnings"]:
        warn(w)


@app.command(
    "export",
    epilog="Examples:  archer trace export runs/x --step 3 --out step3.csv  ·  "
    "archer trace export runs/x --step 3 --tokens --format jsonl > tokens.jsonl  ·  "
    "archer trace export old/trace --step 3 --tokenizer ~/models/Qwen2.5-1.5B  ·  "
    "archer trace export runs/x --step 3 --no-decode   (ids only, no tokenizer loaded)",
)
def export(
    path: Path = typer.Argument(..., help="A run directory (with trace/) or a trace directory."),
    step: int = typer.Option(..., "--step", help="The step to export."),
    fmt: Format = typer.Option(Format.csv, "--format", help="csv or jsonl.", case_sensitive=False),
    out_file: Path | None = typer.Option(None, "--out", help="File to write (atomically); default: stdout."),
    tokens: bool = typer.Option(False, "--tokens", help="One row per token instead of one per response."),
    tokenizer: Path | None = typer.Option(
        None,
        "--tokenizer",
        help="Tokenizer folder for the text columns (default: the run's, from summary.json or "
        "<run>/tokenizer).",
    ),
    no_decode: bool = typer.Option(
        False, "--no-decode", help="Leave the text columns empty (no tokenizer is loaded)."
    ),
) -> None:
    """One step's responses (summary columns, prompt and response text) or tokens (id, text, entropy,
    influence) as CSV or JSON lines."""
    from archer.core.trace import TraceReader
    from archer.core.trace.export import (
        RESPONSE_EXPORT_COLUMNS,
        RESPONSE_TEXT_COLUMNS,
        TOKEN_EXPORT_COLUMNS,
        export_file,
        step_response_records,
        step_token_records,
        write_records,
    )
    from archer.errors import UsageError

    if tokenizer is not None and no_decode:
        raise UsageError("--tokenizer and --no-decode exclude each other", hint="pass one of them")
    if tokenizer is not None and not tokenizer.expanduser().is_dir():
        raise UsageError(f"tokenizer folder {tokenizer} does not exist")
    if out_file is not None and not out_file.expanduser().parent.is_dir():
        raise UsageError(
            f"directory {out_file.parent} does not exist", hint=f"create it: mkdir -p {out_file.parent}"
        )
    reader = TraceReader(path)
    reader.step_info(step)  # a step not in the trace -> TraceError naming the span
    decoder = None
    if not no_decode:
        from archer.core.trace.decode import load_decoder, resolve_tokenizer

        where, why = resolve_tokenizer(tokenizer, reader.summary, reader.dir)
        decoder = load_decoder(where, note=why)
        if not decoder.is_text:
            warn(f"text columns left empty: {decoder.note} (or --no-decode)")
            decoder = None
    if tokens:
        records = step_token_records(reader, step, decoder)
        columns = TOKEN_EXPORT_COLUMNS
        what = "tokens"
    else:
        records = step_response_records(reader, step, decoder)
        columns = RESPONSE_EXPORT_COLUMNS + RESPONSE_TEXT_COLUMNS
        what = "responses"
    if out_file is None:
        write_records(sys.stdout, records, columns, fmt.value)
        sys.stdout.flush()
        return
    n = export_file(out_file.expanduser(), records, columns, fmt.value)
    err().print(f"wrote {n:,} {what} of step {step} to {out_file}", highlight=False, markup=False)


@app.command(
    "import-npz",
    epilog="Example:  archer trace import-npz output/Archer2.0/MyRun runs/myrun/trace "
    "--tokenizer models/Qwen2.5-1.5B"
    "  ·  then: archer view runs/myrun/trace",
)
def import_npz(
    old_dir: Path = typer.Argument(
        ..., help="Holds entropy_trace/ and/or influence_trace/ (the original .npz layout)."
    ),
    new_dir: Path = typer.Argument(..., help="The trace directory to create (must not hold steps yet)."),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="Record this tokenizer folder in summary.json, so archer view decodes text."
    ),
) -> None:
    """Convert a trace of the original .npz layout into archer's parquet trace (entropy, influence merged)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from archer.core.trace.npz_import import import_npz as convert
    from archer.errors import UsageError

    if tokenizer is not None and not tokenizer.expanduser().is_dir():
        raise UsageError(f"tokenizer folder {tokenizer} does not exist")
    with Progress(
        TextColumn("converting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("step {task.fields[step]}"),
        TimeElapsedColumn(),
        console=err(),
        transient=True,
    ) as bar:
        task = bar.add_task("convert", total=None, step="-")

        def progress(done: int, total: int, step: int) -> None:
            bar.update(task, completed=done, total=total, step=step)

        report = convert(
            old_dir, new_dir, tokenizer_path=str(tokenizer) if tokenizer else None, progress=progress
        )
    from rich.text import Text

    versions = ", ".join(f"{k} v{v if v is not None else '?'}" for k, v in report.versions.items())
    out().print(Text(f"Converted {report.steps} steps ({versions}) to {report.out_dir}", style="bold green"))
    out().print(
        Text(
            f"  {report.responses:,} responses, {report.influence_rows:,} with influence, "
            f"{report.tokens:,} tokens, {_size(report.bytes)} on disk"
        )
    )
    for w in report.warnings:
        warn(w)
    out().print(
        Text(
            f"Open it: archer view {report.out_dir}" + ("" if tokenizer else " --tokenizer DIR"), style="dim"
        )
    )
