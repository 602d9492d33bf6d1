"""`archer ablate`: run a preset over a grid of settings, one `archer train` process per case."""

from __future__ import annotations

from pathlib import Path

import typer

from archer.cli.completion import complete_override, complete_preset

EPILOG = (
    "Examples:\n\n"
    "  archer ablate --preset quickstart-influence --grid grid.yaml --dry-run\n\n"
    "  archer ablate --preset quickstart-influence --grid grid.yaml --out runs/abl trainer.total_steps=50\n\n"
    "  archer ablate --resume --out runs/abl\n\n"
    "  archer collect runs/abl\n\n"
    "A grid file maps config keys to lists (a Cartesian product); '_:' holds a list of mappings set "
    "together. A baseline with influence.enable=false is always added. Grid syntax, ids, OOM retries "
    "and resume: docs/ablate-collect.md"
)


def ablate(
    overrides: list[str] | None = typer.Argument(
        None,
        metavar="KEY=VALUE",
        autocompletion=complete_override,
        help="Overrides applied to every case, e.g. trainer.total_steps=50.",
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        "-p",
        autocompletion=complete_preset,
        help="Preset name or YAML path (the base of every case).",
    ),
    grid: Path | None = typer.Option(None, "--grid", "-g", help="Grid YAML file (not needed with --resume)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Sweep directory (default: <trainer.out_dir>/ablate-<preset>-<time>)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate every case and print them as a table; run nothing."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the sweep in --out: skip finished cases, rerun the rest."
    ),
    max_failures: int | None = typer.Option(
        None, "--max-failures", min=1, help="Stop the sweep after N failed cases (default: never stop)."
    ),
) -> None:
    """Sweep a grid of settings (influence ablations) with a baseline, each case in its own run."""
    from archer.cli._console import note, render_text, warn
    from archer.cli._console import out as console
    from archer.cli.sweep_display import SweepDisplay, case_table
    from archer.core.sweep.plan import check_new_sweep_dir, load_and_plan
    from archer.core.sweep.runner import SweepRunner, cases_to_run, check_no_orphans
    from archer.core.sweep.state import sweep_lock
    from archer.errors import ArcherError

    sweep, planned, notes = load_and_plan(
        preset=preset, grid_path=grid, overrides=list(overrides or []), out=out, resume=resume
    )
    for o in notes["shadowed"]:
        warn(f"override {o} is replaced by the grid's value in the cases that set that key")
    wanted = [p.id for p in planned]
    todo, skipped = cases_to_run(sweep, wanted)

    if dry_run:
        title = f"[bold]{len(planned)} case(s)[/bold] · preset {sweep.preset} · engine {sweep.engine}"
        table = _plan_table(sweep, wanted, resume, title)
        if console().is_terminal:
            console().print(table)
        else:
            typer.echo(render_text(table), nl=False)
        if resume:
            console().print(f"would run {len(todo)}, skip {len(skipped)} finished")
        console().print("[dim]dry run: nothing was run[/dim]")
        return

    with sweep_lock(sweep.dir):  # before anything reads or writes the sweep's folder
        if not resume:
            check_new_sweep_dir(sweep.dir)
        check_no_orphans(sweep)
        if notes["added"]:
            note(f"added {len(notes['added'])} new case(s) from the grid: {', '.join(notes['added'])}")
        if notes["dropped"]:
            note(
                f"{len(notes['dropped'])} case(s) of the sweep are no longer in the grid and are left as "
                "they are: "
                f"{', '.join(notes['dropped'])}"
            )
        if resume:
            rerun = [c for c in todo if sweep.case(c).status != "pending"]
            note(
                f"resuming {sweep.dir}: {len(skipped)} finished case(s) skipped, {len(todo)} to run"
                + (f" (again: {', '.join(rerun)})" if rerun else "")
            )
        sweep.save()
        console().print(
            f"[bold]archer ablate[/bold] · preset {sweep.preset} · {len(todo)} case(s) to run · {sweep.dir}"
        )
        if not todo:
            console().print("[green]nothing to do:[/green] every case has finished")
            console().print(f"[dim]results: archer collect {sweep.dir}[/dim]")
            return
        display = SweepDisplay(console())
        runner = SweepRunner(sweep, display=display, max_failures=max_failures)
        try:
            with display:
                runner.run(todo)
        finally:
            if not display.live:  # the live table stays on a terminal; logs get it once, unfolded
                typer.echo(render_text(case_table(sweep, title=f"sweep {sweep.dir}")), nl=False)
    failed = [c for c in sweep.cases if c.id in wanted and c.status == "failed"]
    console().print(f"[dim]results: archer collect {sweep.dir}[/dim]")
    if failed:
        raise ArcherError(
            f"{len(failed)} of {len(wanted)} case(s) failed: {', '.join(c.id for c in failed)}",
            hint=f"reasons are in {sweep.dir / 'sweep.json'} and each case's train.log; "
            f"rerun them with: archer ablate --resume --out {sweep.dir}",
        )


def _plan_table(sweep, wanted: list[str], resume: bool, title: str):
    from rich.markup import escape
    from rich.table import Table

    from archer.core.sweep.grid import settings_label

    table = Table(title=title, title_justify="left")
    for col in ("#", "id", "settings", "run dir") + (("status",) if resume else ()):
        table.add_column(col, overflow="fold")
    for i, cid in enumerate(wanted, start=1):
        c = sweep.case(cid)
        settings = settings_label(c.settings)
        row = [str(i), escape(c.id), escape(settings), escape(str(sweep.case_dir(c)))]
        if resume:
            row.append(c.status)
        table.add_row(*row)
    return table
