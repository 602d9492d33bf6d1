"""Find runs for `archer collect` and decide their status, without ever failing on a bad one.

A PATH is a run directory (it holds config.yaml, run.json or metrics.jsonl), a sweep directory
(it holds sweep.json: its cases, in sweep order, including those that never ran) or any folder,
searched for runs and sweeps beneath it. Status comes from sweep.json when the run belongs to a
sweep, else from the run's files: `finished` (metrics reach trainer.total_steps), `failed` (its
train.log ends in an error), `incomplete` (fewer steps: running, killed or interrupted) or
`missing` (no such directory, or nothing written yet).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.core.metrics import read_metrics
from archer.core.run import CONFIG_FILE, METRICS_FILE, RUN_FILE

FINISHED, INCOMPLETE, FAILED, MISSING = "finished", "incomplete", "failed", "missing"
RUN_MARKERS = (CONFIG_FILE, RUN_FILE, METRICS_FILE)
SKIP_DIRS = {"checkpoints", "trace", "warmup", "tokenizer", "data", "tensorboard", "wandb", "__pycache__"}


@dataclass
class RunEntry:
    """One row of the collect table: where the run is, what it is, how it went."""

    name: str
    path: Path
    status: str
    reason: str | None = None
    config: dict[str, Any] | None = None  # the resolved config.yaml (nested)
    settings: dict[str, Any] = field(default_factory=dict)  # flat keys known without config.yaml (sweep)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    sweep: Path | None = None
    case: Any = None  # archer.core.sweep.state.CaseRecord for sweep cases

    @property
    def flat_config(self) -> dict[str, Any]:
        return flatten(self.config) if self.config else dict(self.settings)

    def config_value(self, key: str) -> Any:
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return self.settings.get(key)
            node = node[part]
        return node


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _read_config(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    import yaml

    f = path / CONFIG_FILE
    if not f.exists():
        return None
    try:
        data = yaml.safe_load(f.read_text())
    except (OSError, yaml.YAMLError) as e:
        warnings.append(f"{f}: cannot read ({str(e).splitlines()[0]})")
        return None
    return data if isinstance(data, dict) else None


def _last_step(metrics: list[dict[str, Any]]) -> int:
    steps = [int(r.get("step") or 0) for r in metrics]
    return max([s for s in steps if s > 0], default=0)


def file_status(
    path: Path, config: dict[str, Any] | None, metrics: list[dict[str, Any]]
) -> tuple[str, str | None]:
    """Status of a run from its files alone."""
    from archer.core.sweep.runner import LOG_FILE, last_error_line, read_tail

    if not path.is_dir():
        return MISSING, "no such directory"
    if config is None and not metrics:
        return MISSING, f"no {CONFIG_FILE} or {METRICS_FILE}"
    total = None
    try:
        total = int(config["trainer"]["total_steps"]) if config else None
    except (KeyError, TypeError, ValueError):
        total = None
    steps = _last_step(metrics)
    damaged = _trace_damage(path, config)
    if damaged:  # the training ended, but what it recorded is not whole
        return INCOMPLETE, damaged
    if total is not None and steps >= total:
        return FINISHED, None
    error = last_error_line(read_tail(path / LOG_FILE)) if (path / LOG_FILE).exists() else None
    if error:
        return FAILED, error
    return INCOMPLETE, f"{steps}/{total if total is not None else '?'} steps"


def _trace_damage(path: Path, config: dict[str, Any] | None) -> str | None:
    """Why the run's trace cannot be read as a whole, if its folder is there without a manifest."""
    try:
        trace = (config or {}).get("trace") or {}
        if not trace.get("enable"):
            return None
        folder = Path(str(trace["dir"])).expanduser() if trace.get("dir") else path / "trace"
    except (AttributeError, TypeError):
        return None
    if folder.is_dir() and not (folder / "manifest.jsonl").exists():
        return f"trace manifest missing ({folder / 'manifest.jsonl'})"
    return None


def load_run(path: Path, warnings: list[str], name: str | None = None) -> RunEntry:
    config = _read_config(path, warnings) if path.is_dir() else None
    metrics = read_metrics(path) if path.is_dir() else []
    status, reason = file_status(path, config, metrics)
    return RunEntry(
        name=name or path.name, path=path, status=status, reason=reason, config=config, metrics=metrics
    )


_SWEEP_STATUS = {
    "done": FINISHED,
    "failed": FAILED,
    "running": INCOMPLETE,
    "interrupted": INCOMPLETE,
    "pending": MISSING,
}


def load_sweep(directory: Path, warnings: list[str]) -> list[RunEntry] | None:
    """The cases of a sweep as entries (None if sweep.json cannot be read)."""
    from archer.core.sweep.state import Sweep
    from archer.errors import ArcherError

    try:
        sweep = Sweep.load(directory)
    except ArcherError as e:
        warnings.append(f"{directory}: {e.message}; looking for runs beneath it instead")
        return None
    out = []
    for rec in sweep.cases:
        run_dir = sweep.case_dir(rec)
        entry = load_run(run_dir, warnings, name=rec.id)
        entry.sweep, entry.case = directory, rec
        entry.settings = dict(rec.settings)
        status = _SWEEP_STATUS.get(rec.status, INCOMPLETE)
        reason = rec.reason
        if rec.status == "pending":
            reason = "not run yet"
        elif rec.status == "running":
            reason = "running" + (f", step {rec.steps}" if rec.steps else "")
        if status != MISSING and entry.status == MISSING:  # sweep.json says it ran, the files are gone
            status, reason = MISSING, f"run directory gone (sweep says {rec.status})"
        entry.status, entry.reason = status, reason
        out.append(entry)
    return out


def _is_run(path: Path) -> bool:
    return any((path / m).exists() for m in RUN_MARKERS)


def find_runs(paths: list[Path]) -> tuple[list[RunEntry], list[str]]:
    """Entries for every PATH, in argument order (a sweep in case order, a folder in path order);
    a run reached twice is listed once. Returns (entries, warnings)."""
    from archer.core.sweep.state import SWEEP_FILE

    warnings: list[str] = []
    entries: list[RunEntry] = []

    def add_dir(d: Path) -> bool:
        if (d / SWEEP_FILE).exists():
            found = load_sweep(d, warnings)
            if found is not None:
                entries.extend(found)
                return True
        if _is_run(d):
            entries.append(load_run(d, warnings))
            return True
        return False

    for p in paths:
        p = Path(p).expanduser()
        if not p.exists():
            entries.append(
                RunEntry(name=p.name or str(p), path=p, status=MISSING, reason="no such directory")
            )
            continue
        if not p.is_dir():
            warnings.append(f"{p} is not a directory; skipped")
            continue
        if add_dir(p):
            continue
        before = len(entries)
        for root, dirs, _files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
            r = Path(root)
            if r != p and add_dir(r):
                dirs[:] = []
        if len(entries) == before:
            warnings.append(f"{p}: no runs found (a run directory holds {CONFIG_FILE}; a sweep, sweep.json)")

    unique: list[RunEntry] = []
    seen: set[str] = set()
    for e in entries:
        key = str(e.path.resolve()) if e.path.exists() else f"missing:{e.path}"
        if key in seen:
            continue
        seen.add(key)
        unique.append(e)
    _disambiguate(unique)
    return unique, warnings


def _disambiguate(entries: list[RunEntry]) -> None:
    """Same names (two sweeps' baselines, runs/a/x and runs/b/x) get their parent folder prefixed."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.name] = counts.get(e.name, 0) + 1
    for e in entries:
        if counts[e.name] > 1:
            parent = (e.sweep or e.path.parent).name
            e.name = f"{parent}/{e.name}"
