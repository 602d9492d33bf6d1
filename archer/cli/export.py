"""`archer export`: a training checkpoint (local engine or verl FSDP) as a Hugging Face model folder.

Thin by design: the work and the checks live in `archer.core.export`; this module parses options,
shows what is happening on stderr and prints what was written and how it was checked.
"""

from __future__ import annotations

from pathlib import Path

import typer

EPILOG = (
    "RUN_DIR is a run directory (its latest checkpoint, or --step N), or one checkpoint folder: "
    "checkpoints/step_000010/ of the local engine, or global_step_N/actor/ of verl (FSDP shards, merged "
    "by verl's own model merger, which writes bf16). The export is checked before it is put in place: "
    "it must load with transformers and give the checkpoint's logits on a few tokens (bitwise, in the "
    "exported dtype); a mismatch exits 1 and writes nothing.\n\n"
    "Examples:\n\n"
    "  archer export runs/quickstart --out models/quickstart\n\n"
    "  archer export runs/quickstart --step 200 --out models/qs-200\n\n"
    "  archer export checkpoints/dapo/global_step_500/actor --out models/dapo-500 --force\n\n"
    "Then: archer eval --model models/quickstart"
)


def export(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory or checkpoint folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the Hugging Face model to."),
    step: int | None = typer.Option(None, "--step", help="Checkpoint step (default: the latest)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Compare weights and logits with the checkpoint."
    ),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="Tokenizer folder, if the checkpoint has none."
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow model code from the folder."
    ),
) -> None:
    """Write a checkpoint as a Hugging Face model folder (with its tokenizer) and check it."""
    from archer.cli._console import err
    from archer.cli._console import out as console
    from archer.core.export.exporter import export_checkpoint

    with err().status("locating the checkpoint…") as spinner:
        report = export_checkpoint(
            run_dir,
            out=out,
            step=step,
            force=force,
            check=check,
            tokenizer=tokenizer,
            trust_remote_code=trust_remote_code,
            status=lambda msg: spinner.update(msg),
        )
    c = console()
    c.print(f"[bold green]exported[/bold green] {report.source.describe()}")
    c.print(f"  to {report.out}  ({', '.join(report.files)})  in {report.seconds:.1f}s")
    r = report.check
    if r is None:
        c.print("  [yellow]not checked[/yellow] (--no-check)")
        return
    line = (
        f"  [green]check passed[/green]: loads with transformers; {r['weights_compared']} tensors equal "
        + (
            "the checkpoint"
            if report.source.kind == "local"
            else "the joined shards rounded to " + r["dtype"]
        )
        + "; "
        f"logits on {r['tokens']} tokens equal bitwise in {r['dtype']} (tolerance 0)"
    )
    c.print(line)
    if r.get("fp32_max_abs_logit_diff") is not None:
        c.print(
            f"  verl's merger stores {r['dtype']}: logits move by at most {r['fp32_max_abs_logit_diff']:.3g} "
            "from the fp32 checkpoint"
        )
