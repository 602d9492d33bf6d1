"""`archer influence check`: re-run a traced step's update without token sets and see whether
influence predicted what that costs (archer/core/engines/local/influence_check.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    help="Check what per-token influence predicts.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples:  archer train --preset quickstart-influence --out runs/qi influence.check_every=50  ·  "
    "archer influence check runs/qi  ·  archer influence check runs/qi --step 100 --json",
)

CHECK_EPILOG = (
    "Examples:\n\n"
    "  archer influence check runs/qi\n\n"
    "  archer influence check runs/qi --step 100 --q 20 --draws 8\n\n"
    "  archer influence check runs/qi --json > check.json\n\n"
    "  archer influence check runs/qi --step 100 --set damping=dimension\n\n"
    "A step can be checked when the run kept the state going into its update: train with "
    "influence.check_every=K, or keep the checkpoint of the step before (trainer.save_every). "
    "Results are also merged into RUN/influence_check.json, which 'archer collect' shows as check_rho."
)

KIND_LABELS = {
    "top_influence": "top q% by influence",
    "bottom_influence": "bottom q% by influence",
    "top_entropy": "top q% by entropy",
    "random": "random q%",
}


def _num(v: Any, fmt: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


@app.command("check", epilog=CHECK_EPILOG)
def check(
    run: Path = typer.Argument(..., help="A local-engine run directory traced with influence."),
    step: list[int] = typer.Option(
        None, "--step", help="Step to check (repeatable); default: every checkable step."
    ),
    q: float = typer.Option(10.0, "--q", help="Percent of a group's scored tokens in each removed set."),
    draws: int = typer.Option(4, "--draws", help="Random sets per group."),
    groups: int = typer.Option(8, "--groups", help="Traced groups checked per step (0 = all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random sets and the bootstrap."),
    dtype: str = typer.Option("fp64", "--dtype", help="Precision of the replayed updates: fp64 or fp32."),
    device: str = typer.Option("cpu", "--device", help="Device of the replayed updates (cpu, cuda)."),
    rescore: list[str] = typer.Option(
        None,
        "--set",
        help="KEY=VALUE of influence.* (repeatable): score the step again with these knobs in the "
        "replayed update instead of the trace's scores, e.g. --set damping=dimension.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (every set included)."),
) -> None:
    """Re-run traced steps' updates without the top/bottom-influence, top-entropy and random token
    sets of each group, and report how well influence predicted the lost margin."""
    from archer.cli._console import err, note, out, warn
    from archer.cli.progress import ConsoleTaskProgress
    from archer.errors import UsageError

    if not 0 < q <= 100:
        raise UsageError(f"--q must be in (0, 100]; got {q}", hint="for example --q 10")
    if draws < 0 or groups < 0:
        raise UsageError("--draws and --groups must be >= 0", hint="for example --draws 4 --groups 8")
    if dtype not in ("fp64", "fp32"):
        raise UsageError(f"--dtype must be fp64 or fp32; got {dtype!r}", hint="fp64 is the default")
    if not run.is_dir():
        raise UsageError(f"no run directory at {run}", hint="pass the --out folder of 'archer train'")

    from archer.core.engines.local.influence_check import (
        CheckOptions,
        check_step,
        checkable_steps,
        save_results,
    )

    ok, missing = checkable_steps(run)
    if step:
        chosen = list(dict.fromkeys(step))
    else:
        chosen = ok
        if not ok:
            raise UsageError(
                f"no traced step of {run} has a saved state before its update",
                hint="train with influence.check_every=K (and influence.enable=true), or keep checkpoints "
                "(trainer.save_every): step N needs the checkpoint of step N-1",
            )
    overrides = {}
    for item in rescore or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r} is not KEY=VALUE", hint="for example --set damping=dimension")
        import yaml

        overrides[key.strip().removeprefix("influence.")] = yaml.safe_load(value)
    options = CheckOptions(
        q=q, draws=draws, max_groups=groups, seed=seed, dtype=dtype, device=device, rescore=overrides
    )
    results = []
    for s in chosen:
        results.append(check_step(run, s, options, progress=ConsoleTaskProgress(err())))
        if not overrides:  # the results file holds the trace's own scores only
            save_results(run, results, options)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=1))
        return
    console = out()
    for r in results:
        console.print(_step_table(r))
    if len(results) > 1:
        rhos = [r.spearman for r in results if math.isfinite(r.spearman)]
        if rhos:
            console.print(f"mean Spearman over {len(rhos)} steps: {sum(rhos) / len(rhos):.3f}")
    if not step and missing:
        note(f"{len(missing)} traced steps have no saved state and were not checked")
    if any(r.spearman < 0.3 for r in results if math.isfinite(r.spearman)):
        warn("influence agrees weakly with the measured effects at some steps (Spearman < 0.3)")
    if overrides:
        note(f"scores recomputed with {overrides} (not saved to influence_check.json)")
    else:
        note(f"results merged into {run / 'influence_check.json'}")


def _step_table(r: Any) -> Any:
    from rich.table import Table

    title = (
        f"step {r.step}: Spearman(predicted, measured) = {_num(r.spearman)} "
        f"[95% CI {_num(r.ci_low)}, {_num(r.ci_high)}] over {r.sets} token sets"
    )
    caption = (
        f"{r.groups} groups, {r.tokens} scored tokens, sets of {r.set_size_pct:g}% · re-run from {r.state} "
        f"(lr {r.lr:.3g}) · top-influence set cost the most in {_num(100 * r.top_costs_most, '.0f')}% of "
        f"groups · replay entropy error {_num(r.replay_entropy_err, '.1e')} · {r.seconds:.0f}s"
    )
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    t.add_column("removed set")
    t.add_column("sets", justify="right")
    t.add_column("predicted cost", justify="right")
    t.add_column("measured cost", justify="right")
    t.add_column("of the full update's gain", justify="right")
    for k in sorted(r.kinds, key=lambda k: r.order.index(k["kind"]) if k["kind"] in r.order else 9):
        rel = k["measured_relative"]
        t.add_row(
            KIND_LABELS.get(k["kind"], k["kind"]),
            str(k["sets"]),
            f"{k['predicted']:.3g}",
            f"{k['measured']:.3g}",
            "—" if rel is None else f"{100 * rel:.0f}%",
        )
    return t
