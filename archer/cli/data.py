"""`archer data synth|prepare`: make the synthetic task, or clean a downloaded dataset, for training.

Thin by design: the work lives in `archer.core.data` (imported inside the commands, with pyarrow,
so `archer --help` stays fast); this module parses options, shows progress on stderr and closes
with a summary table on stdout that names the next command.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    help="Make and prepare training data (synthetic tasks, DAPO-Math).",
    no_args_is_help=True,
    context_settings=CONTEXT,
    epilog="Examples:  archer data synth arithmetic --out data/arith  ·  "
    "archer data prepare dapo-math --input dapo.parquet --out data/dapo",
)
synth_app = typer.Typer(
    help="Generate seeded synthetic tasks (no download).", no_args_is_help=True, context_settings=CONTEXT
)
prepare_app = typer.Typer(
    help="Clean, deduplicate and split a local copy of a public dataset.",
    no_args_is_help=True,
    context_settings=CONTEXT,
)
app.add_typer(synth_app, name="synth")
app.add_typer(prepare_app, name="prepare")


class Difficulty(str, Enum):
    easy = "easy"
    medium = "medium"
    hard = "hard"


class Language(str, Enum):
    all = "all"
    en = "en"
    cn = "cn"


SYNTH_EPILOG = (
    "Difficulties: easy = operands 0..99 with + - (answers >= 0); medium = 0..999 with + -; "
    "hard = 0..999 with + - *. --max-operand and --ops override the difficulty's values.\n\n"
    "Examples:\n\n"
    "  archer data synth arithmetic --out data/arith\n\n"
    "  archer data synth arithmetic --out data/arith-hard --difficulty hard --n 50000 --seed 1\n\n"
    "  archer data synth arithmetic --out data/mul --max-operand 20 --ops '*'\n\n"
    "Then train on it:\n\n"
    "  archer train --preset quickstart-arith data.train_files=data/arith/train.parquet "
    "data.val_files=data/arith/val.parquet"
)

PREPARE_EPILOG = (
    "The input is a local parquet or jsonl copy of open-r1/DAPO-Math-17k-Processed or of the raw "
    "BytedTsinghua-SIA/DAPO-Math-17k (1.79M rows, ~100 copies of each problem); the format is "
    "detected from the columns.\n\n"
    "Examples:\n\n"
    "  archer data prepare dapo-math --input dapo-math-17k.parquet --out data/dapo\n\n"
    "  archer data prepare dapo-math --input processed-en.jsonl --out data/dapo-en --language en "
    "--strip-instruction\n\n"
    "  archer data prepare dapo-math --input dapo-math-17k.parquet --out data/dapo --strict\n\n"
    "Then train on it:\n\n"
    "  archer train --preset math model.path=/models/qwen data.train_files=data/dapo/train.parquet "
    "data.val_files=data/dapo/val.parquet"
)


def _summary_table(title: str, rows: list[tuple[str, str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for what, value in rows:
        table.add_row(what, value)
    return table


@synth_app.command("arithmetic", epilog=SYNTH_EPILOG, context_settings=CONTEXT)
def synth_arithmetic(
    out: Path = typer.Option(..., "--out", "-o", help="Directory for train.parquet and val.parquet."),
    n: int = typer.Option(10000, "--n", min=1, help="Training problems."),
    val_n: int = typer.Option(256, "--val-n", min=0, help="Validation problems (never in train)."),
    seed: int = typer.Option(0, "--seed", help="Seed; the same seed gives the same files."),
    difficulty: Difficulty = typer.Option(
        Difficulty.easy, "--difficulty", help="Operand range and operators."
    ),
    max_operand: int = typer.Option(
        0, "--max-operand", min=0, help="Largest operand (0 = the difficulty's)."
    ),
    ops: str = typer.Option("", "--ops", help="Operators from '+-*' (empty = the difficulty's)."),
) -> None:
    """Write seeded two-operand arithmetic problems ('23+45=' -> '68') for the tiny char-level model."""
    from rich.markup import escape

    from archer.cli._console import err
    from archer.cli._console import out as console
    from archer.core.data.synth import write_arithmetic

    with err().status("generating arithmetic problems ..."):
        result = write_arithmetic(
            out, n=n, val_n=val_n, seed=seed, difficulty=difficulty.value, max_operand=max_operand, ops=ops
        )
    paths = result["paths"]
    console().print(
        _summary_table(
            "archer data synth arithmetic",
            [
                ("task", escape(result["spec"])),
                ("seed", str(seed)),
                ("train rows", str(result["counts"]["train"])),
                ("val rows", str(result["counts"]["val"])),
                ("output files", escape(f"{paths['train']}\n{paths['val']}")),
            ],
        )
    )
    console().print(
        "[dim]Next:[/dim] "
        + escape(
            f"archer train --preset quickstart-arith data.train_files={paths['train']} "
            f"data.val_files={paths['val']}"
        ),
        soft_wrap=True,
    )


def _progress_callback(progress: Any) -> Any:
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            for other in tasks.values():  # a new stage means the previous one is complete
                t = progress.tasks[other]
                progress.update(
                    other, completed=t.total if t.total is not None else t.completed, total=t.total
                )
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done, total=total)

    return update


@prepare_app.command("dapo-math", epilog=PREPARE_EPILOG, context_settings=CONTEXT)
def prepare_dapo_math(
    input_path: Path = typer.Option(..., "--input", "-i", help="Local DAPO-Math parquet or jsonl file."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for train.parquet and val.parquet."),
    val_size: int = typer.Option(512, "--val-size", min=0, help="Problems held out for validation."),
    seed: int = typer.Option(0, "--seed", help="Seed for the train/val split."),
    language: Language = typer.Option(
        Language.all, "--language", help="Keep English (en), Chinese (cn) or all."
    ),
    strip_instruction: bool = typer.Option(
        False,
        "--strip-instruction",
        help="Remove DAPO's 'Solve the following ... Answer:' wrapper from prompts.",
    ),
    strict: bool = typer.Option(False, "--strict", help="Fail (write nothing) if any row is bad."),
) -> None:
    """Deduplicate DAPO-Math, drop and count bad rows, and split it into train/val parquet files."""
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from archer.cli._console import err
    from archer.cli._console import out as console
    from archer.core.data.dapo_math import prepare_dapo_math as prepare

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err(),
        transient=True,
    ) as progress:
        report = prepare(
            input_path,
            out,
            val_size=val_size,
            seed=seed,
            language=language.value,
            strip_instruction=strip_instruction,
            strict=strict,
            progress=_progress_callback(progress),
        )
    rows = [
        ("input", escape(f"{report.input_path} ({report.input_format})")),
        ("rows read", str(report.rows_read)),
    ]
    if report.bad:
        rows += [(f"bad: {kind.replace('_', ' ')}", str(count)) for kind, count in report.bad.items()]
    else:
        rows.append(("bad rows", "0"))
    rows += [
        ("duplicates removed", str(report.duplicates_removed)),
        ("conflicting problems", str(report.conflicting_prompts)),
        ("unique problems", str(report.unique_prompts)),
    ]
    if language != Language.all:
        rows.append((f"not {language.value} (dropped)", str(report.language_filtered)))
    rows += [
        ("train rows", str(report.train_rows)),
        ("val rows", str(report.val_rows)),
        ("output files", escape(f"{report.paths['train']}\n{report.paths['val']}")),
    ]
    console().print(_summary_table("archer data prepare dapo-math", rows))
    console().print(
        "[dim]Next:[/dim] "
        + escape(
            f"archer train --preset math model.path=MODEL data.train_files={report.paths['train']} "
            f"data.val_files={report.paths['val']}"
        ),
        soft_wrap=True,
    )
