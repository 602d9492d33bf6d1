"""Turn a preset, overrides and a grid into a validated sweep, before anything runs.

Every case is composed with the real config machinery (`compose`), so a misspelt key, a wrong
type or a value outside a key's choices fails up front with exit 2 and names the case, instead of
surfacing as a crashed run an hour into the sweep.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.errors import ConfigError, UsageError

from .grid import Case, expand_grid, load_grid
from .state import SWEEP_FILE, SWEEP_LOCK, CaseRecord, Sweep

# Keys that only say where things go; two cases differing only there are the same experiment.
PLACEMENT_KEYS = ("trainer.out_dir", "trainer.run_name", "trainer.cache_dir", "trace.dir", "description")


@dataclass
class PlannedCase:
    case: Case
    composed: Any  # archer.core.config.Composed

    @property
    def id(self) -> str:
        return self.case.id


def _strip(container: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(container, default=str))
    for key in PLACEMENT_KEYS:
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def plan_cases(preset: str, overrides: list[str], cases: list[Case]) -> list[PlannedCase]:
    """Compose and validate every case; ConfigError (exit 2) names the case and the key."""
    from archer.core.config import compose

    base = compose(preset, overrides)  # the command line alone first: its errors are not a case's
    base.require_complete()
    planned: list[PlannedCase] = []
    seen: dict[str, str] = {}
    for case in cases:
        try:
            composed = compose(preset, [*overrides, *case.overrides])
            composed.require_complete()
        except ConfigError as e:
            raise ConfigError(f"grid case {case.id} ({case.label()}): {e.message}", hint=e.hint) from e
        key = json.dumps(_strip(composed.to_dict()), sort_keys=True)
        if key in seen:
            raise ConfigError(
                f"grid cases {seen[key]} and {case.id} resolve to the same config",
                hint="a grid value equals what another case already sets (check the preset's own values)",
            )
        seen[key] = case.id
        planned.append(PlannedCase(case, composed))
    return planned


def grid_keys(cases: list[Case]) -> set[str]:
    return {k for c in cases for k in c.settings}


def shadowed_overrides(overrides: list[str], cases: list[Case]) -> list[str]:
    """Command-line overrides of keys that the grid also sets (the grid wins for those cases)."""
    from archer.core.config.compose import parse_override

    keys = grid_keys([c for c in cases if not c.baseline])
    return [o for o in overrides if parse_override(o)[1] in keys]


def default_sweep_dir(preset: str, overrides: list[str]) -> Path:
    from archer.core.config import compose

    c = compose(preset, overrides)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(c.cfg.trainer.out_dir).expanduser() / f"ablate-{c.preset}-{stamp}"


def _record(p: PlannedCase) -> CaseRecord:
    cfg = p.composed.cfg
    return CaseRecord(
        id=p.id,
        settings=dict(p.case.settings),
        overrides=list(p.case.overrides),
        run_dir=p.id,
        baseline=p.case.baseline,
        influence=bool(cfg.influence.enable),
        offload=bool(cfg.influence.grad_offload_to_cpu),
        total_steps=int(cfg.trainer.total_steps),
    )


def new_sweep(
    directory: Path,
    preset: str,
    overrides: list[str],
    grid: dict[str, Any],
    grid_file: str | None,
    planned: list[PlannedCase],
) -> Sweep:
    from archer import __version__

    first = planned[0].composed
    return Sweep(
        dir=directory,
        preset=first.preset,
        preset_path=str(first.preset_path) if first.preset_path else preset,
        grid=grid,
        grid_file=grid_file,
        overrides=list(overrides),
        engine=str(first.cfg.engine),
        cases=[_record(p) for p in planned],
        archer_version=__version__,
    )


def check_new_sweep_dir(directory: Path) -> None:
    """A new sweep needs an empty (or absent) directory: the runner clears case folders it owns."""
    if (directory / SWEEP_FILE).exists():
        raise UsageError(
            f"{directory} already holds a sweep",
            hint=f"continue it with 'archer ablate --resume --out {directory}', or choose another --out",
        )
    if directory.exists() and any(p.name != SWEEP_LOCK for p in directory.iterdir()):
        raise UsageError(
            f"{directory} is not empty and holds no {SWEEP_FILE}", hint="choose a new --out directory"
        )


def merge_resume(sweep: Sweep, planned: list[PlannedCase]) -> tuple[list[str], list[str]]:
    """Bring a loaded sweep up to date with the (possibly edited) grid: new cases are added as
    pending, known ones keep their history. Returns (added ids, ids no longer in the grid)."""
    by_id = {c.id: c for c in sweep.cases}
    added: list[str] = []
    wanted = set()
    for p in planned:
        wanted.add(p.id)
        fresh = _record(p)
        old = by_id.get(p.id)
        if old is None:
            sweep.cases.append(fresh)
            added.append(p.id)
        else:  # same id = same settings; refresh what the config says about them
            old.overrides, old.influence, old.offload, old.total_steps = (
                fresh.overrides,
                fresh.influence,
                fresh.offload,
                fresh.total_steps,
            )
    dropped = [c.id for c in sweep.cases if c.id not in wanted]
    return added, dropped


def load_and_plan(
    *,
    preset: str | None,
    grid_path: Path | None,
    overrides: list[str],
    out: Path | None,
    resume: bool,
) -> tuple[Sweep, list[PlannedCase], dict[str, Any]]:
    """Everything `archer ablate` does before running: returns (sweep, planned cases, notes)."""
    notes: dict[str, Any] = {"added": [], "dropped": [], "shadowed": []}
    existing: Sweep | None = None
    if resume:
        if out is None:
            raise UsageError(
                "--resume needs --out DIR, the sweep to continue",
                hint="archer ablate --resume --out runs/ablate-...",
            )
        existing = Sweep.load(out)
        if preset is None:
            preset = existing.preset_path
        if not overrides:
            overrides = list(existing.overrides)
        elif list(overrides) != list(existing.overrides):
            raise UsageError(
                f"the sweep in {out} was made with overrides {existing.overrides or '(none)'}, not "
                f"{overrides}",
                hint=(
                    "resume with the same overrides (or none, to reuse them), or start a new sweep with "
                    "another --out"
                ),
            )
    if preset is None:
        raise UsageError(
            "missing --preset",
            hint="for example: archer ablate --preset quickstart-influence --grid grid.yaml",
        )
    if grid_path is not None:
        grid = load_grid(grid_path)
        grid_file: str | None = str(grid_path)
    elif existing is not None:
        grid, grid_file = existing.grid, existing.grid_file
    else:
        raise UsageError(
            "missing --grid", hint="pass a YAML grid file, e.g. --grid grid.yaml (see docs/ablate-collect.md)"
        )
    cases = expand_grid(grid)
    planned = plan_cases(preset, list(overrides), cases)
    notes["shadowed"] = shadowed_overrides(list(overrides), cases)

    if existing is not None:
        first = planned[0].composed
        if (
            first.preset_path
            and Path(str(first.preset_path)).resolve() != Path(existing.preset_path).resolve()
        ):
            raise UsageError(
                f"the sweep in {out} was made with preset {existing.preset_path}, not {first.preset_path}",
                hint="resume without --preset, or start a new sweep with another --out",
            )
        existing.grid, existing.grid_file = grid, grid_file
        notes["added"], notes["dropped"] = merge_resume(existing, planned)
        sweep = existing
    else:
        directory = out if out is not None else default_sweep_dir(preset, list(overrides))
        sweep = new_sweep(directory, preset, list(overrides), grid, grid_file, planned)
    return sweep, planned, notes
