"""`archer train`: compose a preset with overrides and run it on its engine."""

from __future__ import annotations

from pathlib import Path

import typer

from archer.cli.completion import complete_override, complete_preset

EPILOG = (
    "Examples:\n\n"
    "  archer train --preset quickstart\n\n"
    "  archer train --preset quickstart trainer.total_steps=20 --out runs/demo\n\n"
    "  archer train --preset quickstart ~warmup.steps --dry-run\n\n"
    "  archer train --resume --out runs/demo trainer.total_steps=120\n\n"
    "  archer train --preset math model.path=/models/qwen data.train_files=data/dapo/train.parquet "
    "--dry-run\n\n"
    "  archer train --preset math model.path=/models/qwen data.train_files=data/dapo/train.parquet "
    "--dry-run --full-config\n\n"
    "Overrides are key=value (YAML values), ~key drops a preset's value. "
    "List the keys: archer presets show quickstart --explain"
)


def train(
    overrides: list[str] | None = typer.Argument(
        None,
        metavar="KEY=VALUE",
        autocompletion=complete_override,
        help="Config overrides, e.g. trainer.total_steps=10 rollout.n=8.",
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        "-p",
        autocompletion=complete_preset,
        help="Preset name (see 'archer presets ls') or path to a YAML file.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory (default: <trainer.out_dir>/<name>)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Compose, validate and print the config and plan; do not train."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint."
    ),
    full_config: bool = typer.Option(
        False, "--full-config", help="With --dry-run on verl: print verl's whole composed config."
    ),
) -> None:
    """Train a policy with RL on the preset's engine (local or verl)."""
    from archer.cli._console import note, print_yaml, warn
    from archer.cli._console import out as console
    from archer.core.config import compose
    from archer.core.run import CONFIG_FILE, check_new_run_dir, check_run_dir_path, resolve_run_dir
    from archer.errors import UsageError

    overrides = list(overrides or [])
    if resume:
        if out is None:
            raise UsageError(
                "--resume needs --out DIR, the run to continue", hint="archer train --resume --out runs/NAME"
            )
        saved = out / CONFIG_FILE
        if not saved.exists():
            raise UsageError(
                f"nothing to resume in {out} (no {CONFIG_FILE})", hint="check the path given to --out"
            )
        if preset is not None:
            note(f"--resume uses the run's own config ({saved}); --preset {preset} is ignored")
        composed = compose(str(saved), overrides)
        import json

        try:
            composed.preset = json.loads((out / "run.json").read_text()).get("preset", composed.preset)
        except (OSError, ValueError):
            pass
    else:
        if preset is None:
            raise UsageError(
                "missing --preset",
                hint="for example: archer train --preset quickstart (see 'archer presets ls')",
            )
        composed = compose(preset, overrides)

    run_dir = resolve_run_dir(composed.cfg, composed.preset, out)
    if dry_run and composed.cfg.engine == "verl":  # verl's composed config and the plan; no Ray
        from archer.core.engines.verl.launch import dry_run as verl_dry_run

        _print_verl_dry_run(verl_dry_run(composed, run_dir), full=full_config)
        console().print("[dim]dry run: nothing was trained[/dim]")
        return
    if dry_run:
        print_yaml(composed.to_yaml(resolve=True))
        missing = composed.missing()
        console().print(f"[bold]preset[/bold]  {composed.preset}  ({composed.preset_path})")
        console().print(f"[bold]engine[/bold]  {composed.cfg.engine}")
        console().print(f"[bold]output[/bold]  {run_dir}")
        if missing:
            warn(f"not set yet (required before training): {', '.join(missing)}")
        console().print("[dim]dry run: nothing was trained[/dim]")
        return

    composed.require_complete()
    from archer.cli.progress import ConsoleReporter
    from archer.core.engines import check_output_dirs, refuse_early, run_engine
    from archer.core.runlock import run_dir_lock

    refuse_early(composed)
    check_run_dir_path(run_dir)
    check_output_dirs(composed.cfg, run_dir)
    with run_dir_lock(run_dir):  # one process per run directory, taken before anything is read or written
        removed = check_new_run_dir(run_dir, resume)
        if removed:
            note(
                f"{run_dir} held a run that stopped before its first step: "
                f"replacing it ({', '.join(removed)})"
            )
        reporter = ConsoleReporter(console())
        result = run_engine(composed, run_dir, resume=resume, reporter=reporter)
    if result is not None:
        print_summary(result, traced=bool(composed.cfg.trace.enable))


def _print_verl_dry_run(plan, *, full: bool) -> None:
    """The plan first, then the config: the keys this run sets, or verl's whole config (--full-config)."""
    from rich.markup import escape

    from archer.cli._console import out, print_yaml, warn

    if plan.plan:
        out().print("[bold]verl engine plan[/bold] (dry run: nothing was started)")
        for label, value in plan.plan:
            out().print(f"  [bold]{label:<15}[/bold] {escape(value)}", soft_wrap=True)
    if full or not plan.set_yaml:
        out().print("[bold]verl config[/bold] (complete, as verl will read it)")
        print_yaml(plan.config_yaml)
    else:
        out().print("[bold]verl config[/bold] (the keys this run sets; --full-config prints all of verl's)")
        print_yaml(plan.set_yaml)
    for w in plan.warnings:
        warn(w)


WARMUP_SOURCES = {
    "trained": "trained in this run",
    "cache": "taken from the cache (a finished warm-up of the same settings, data, code and tokenizer)",
    "run": "this run's own, from its earlier start",
}


def print_summary(result, *, traced: bool) -> None:
    """The closing lines of a run (either engine): time, reward and validation before -> after
    (a drop is a warning), the trace."""
    from rich.markup import escape

    from archer.cli._console import out
    from archer.core.metrics import read_metrics
    from archer.core.outcome import outcome_of

    console = out()
    run_dir = result.run_dir
    rows = read_metrics(run_dir)
    console.print(
        f"[bold green]done[/bold green] in {result.setup_seconds + result.train_seconds:.0f}s "
        f"(set-up and warm-up {result.setup_seconds:.0f}s, training {result.train_seconds:.0f}s) · "
        f"run {escape(str(run_dir))}"
    )
    outcome = outcome_of(rows, result.first_val, result.last_val)
    if outcome.reward_gain is not None:
        k = outcome.reward_steps
        console.print(
            f"reward (mean of first {k} steps → last {k}): {outcome.reward_first:.3f} → "
            f"{outcome.reward_last:.3f} ({outcome.reward_gain:+.3f})"
        )
    if outcome.val_gain is not None:
        console.print(
            f"validation accuracy before → after: {outcome.val_before:.3f} → {outcome.val_after:.3f}"
        )
        verdict = escape(outcome.verdict() or "")
        console.print(f"[bold yellow]warning:[/bold yellow] {verdict}" if outcome.val_fell else verdict)
    source = WARMUP_SOURCES.get(result.warmup_source)
    if source:
        console.print(f"warm-up: {source}")
    if traced and result.trace_dir is not None:
        console.print(f"trace: {escape(str(result.trace_dir))}")
        console.print(f"explore it: [bold]archer view {escape(str(run_dir))}[/bold]")
