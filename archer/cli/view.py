"""`archer view PATH`: open a trace in the terminal viewer (Textual, imported only when run)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

EPILOG = (
    "Examples:  archer view --demo  ·  archer view runs/quickstart  ·  "
    "archer view runs/quickstart/trace --step 12  ·  "
    "archer view runs/math --tokenizer ~/models/Qwen2.5-1.5B  ·  archer view runs/x --no-decode  ·  "
    "over SSH: ssh -t login-node 'archer view runs/x'   (press ? in the app for every key)"
)

TRACE_MARKERS = ("trace", "manifest.jsonl", "summary.json", "steps")


def view(
    path: Path | None = typer.Argument(
        None, help="A run directory (one with trace/) or a trace directory.", show_default=False
    ),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="Tokenizer folder for decoding; default: tokenizer_path in summary.json."
    ),
    step: int | None = typer.Option(None, "--step", help="Step to open first (default: the latest)."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Show token ids instead of text."),
    export_dir: Path | None = typer.Option(
        None, "--export-dir", help="Where e / E write CSV files (default: the current directory)."
    ),
    demo: bool = typer.Option(
        False, "--demo", help="Open the demo trace shipped with archer (worked arithmetic chains)."
    ),
) -> None:
    """Explore a trace: steps, responses, entropy and influence heatmaps, top-K tokens, groups."""
    from archer.errors import TraceError, UsageError

    if demo:
        if path is not None:
            raise UsageError("pass a trace PATH or --demo, not both", hint="archer view --demo")
        from archer.view.demo import demo_available, opened_demo

        if not demo_available():
            raise TraceError(
                "the demo trace is missing from this installation",
                hint="reinstall archer, or regenerate it with: python bench/demo_trace.py",
            )
        with opened_demo() as run:  # a copy: the viewer never writes into the package
            view(run, tokenizer, step, no_decode, export_dir, demo=False)
        return
    if path is None:
        raise UsageError("missing the trace to open", hint="archer view RUN_DIR, or archer view --demo")
    p = path.expanduser()
    if not p.exists():
        raise TraceError(
            f"no trace at {p}: the path does not exist",
            hint="pass a run directory (one with trace/) or a trace directory",
        )
    from archer.core.trace.reader import check_not_npz_trace

    check_not_npz_trace(p)  # an old .npz trace: name the converter, not "truncated or corrupt"
    if not p.is_dir() or not any((p / m).exists() for m in TRACE_MARKERS):
        raise TraceError(
            f"{p} holds no trace (no trace/, manifest.jsonl or summary.json)",
            hint="pass a run directory (one with trace/) or a trace directory; "
            "old .npz traces convert with: archer trace import-npz OLD_DIR NEW_DIR",
        )
    if tokenizer is not None and not tokenizer.expanduser().is_dir():
        raise UsageError(
            f"tokenizer folder {tokenizer} does not exist",
            hint="pass the folder that holds tokenizer.json / tokenizer_config.json, or --no-decode",
        )
    if export_dir is not None and not export_dir.expanduser().is_dir():
        raise UsageError(
            f"export directory {export_dir} does not exist", hint=f"create it: mkdir -p {export_dir}"
        )
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "archer view needs an interactive terminal",
            hint="over SSH use 'ssh -t'; to dump data use: archer trace export PATH --step N",
        )

    from archer.view.app import ArcherViewer

    ArcherViewer(p, tokenizer=tokenizer, step=step, no_decode=no_decode, export_dir=export_dir).run()
