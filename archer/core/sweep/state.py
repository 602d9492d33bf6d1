"""`sweep.json`: the whole record of a sweep, rewritten atomically after every change.

It holds what was asked (preset, grid, overrides), every case (id, settings, overrides, run
directory relative to the sweep, status, reason, attempts, times) and the sweep's own status, so
`--resume` and `archer collect` need nothing else. A reader never sees half a file (temp file +
rename); a sweep killed outright leaves a case "running", which `--resume` treats as interrupted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from archer.core.run import atomic_write_text
from archer.errors import UsageError

SWEEP_FILE = "sweep.json"
SWEEP_LOCK = ".sweep.lock"
FORMAT = "archer-sweep"
VERSION = 1

# Case statuses. "running" on disk after the sweep is gone means it was killed.
PENDING, RUNNING, DONE, FAILED, INTERRUPTED = "pending", "running", "done", "failed", "interrupted"
STATUSES = (PENDING, RUNNING, DONE, FAILED, INTERRUPTED)


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class Attempt:
    """One launch of a case's training process."""

    n: int
    started: str
    command: list[str]
    offload: bool = False  # launched with influence.grad_offload_to_cpu=true by the OOM retry
    resumed: bool = False  # continued an interrupted run (archer train --resume)
    ended: str | None = None
    seconds: float | None = None
    returncode: int | None = None
    oom: bool = False
    interrupted: bool = False
    reason: str | None = None
    log: str | None = None  # the attempt's log, relative to the case directory
    pid: int | None = None


@dataclass
class CaseRecord:
    id: str
    settings: dict[str, Any]
    overrides: list[str]
    run_dir: str  # relative to the sweep directory
    baseline: bool = False
    influence: bool = True  # influence.enable in the resolved config (the OOM retry needs it)
    offload: bool = False  # influence.grad_offload_to_cpu in the resolved config
    total_steps: int | None = None
    status: str = PENDING
    reason: str | None = None
    oom: bool = False
    steps: int = 0  # last step seen in metrics.jsonl
    step_seconds: float | None = None  # time/step of that step
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseRecord:
        d = dict(d)
        d["attempts"] = [Attempt(**a) for a in d.get("attempts", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Sweep:
    dir: Path
    preset: str
    preset_path: str
    grid: dict[str, Any]
    grid_file: str | None
    overrides: list[str]
    engine: str
    cases: list[CaseRecord]
    status: str = PENDING  # pending | running | finished | interrupted | stopped
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    archer_version: str = ""

    @property
    def path(self) -> Path:
        return self.dir / SWEEP_FILE

    def case(self, case_id: str) -> CaseRecord:
        for c in self.cases:
            if c.id == case_id:
                return c
        raise KeyError(case_id)

    def case_dir(self, rec: CaseRecord) -> Path:
        return self.dir / rec.run_dir

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "preset": self.preset,
            "preset_path": self.preset_path,
            "grid_file": self.grid_file,
            "grid": self.grid,
            "overrides": self.overrides,
            "engine": self.engine,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "archer_version": self.archer_version,
            "counts": {s: sum(c.status == s for c in self.cases) for s in STATUSES},
            "cases": [asdict(c) for c in self.cases],
        }

    def save(self) -> None:
        """Rewrite sweep.json atomically (temp file + rename)."""
        self.updated = now()
        atomic_write_text(self.path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Sweep:
        d = Path(directory)
        path = d / SWEEP_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(
                f"no {SWEEP_FILE} in {d}", hint="pass the --out directory of an earlier 'archer ablate'"
            ) from None
        except (OSError, ValueError) as e:
            raise UsageError(
                f"cannot read {path}: {e}", hint="the file is damaged; start a new sweep with another --out"
            ) from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise UsageError(f"{path} is not an archer sweep file")
        if int(raw.get("version", 0)) > VERSION:
            raise UsageError(
                f"{path} was written by a newer archer (sweep format v{raw.get('version')})",
                hint="upgrade archer to resume or collect it",
            )
        return cls(
            dir=d,
            preset=raw["preset"],
            preset_path=raw.get("preset_path") or raw["preset"],
            grid=raw.get("grid") or {},
            grid_file=raw.get("grid_file"),
            overrides=list(raw.get("overrides") or []),
            engine=raw.get("engine", "local"),
            cases=[CaseRecord.from_dict(c) for c in raw.get("cases", [])],
            status=raw.get("status", PENDING),
            created=raw.get("created") or now(),
            updated=raw.get("updated") or now(),
            archer_version=raw.get("archer_version", ""),
        )


@contextlib.contextmanager
def sweep_lock(directory: Path) -> Iterator[None]:
    """Hold `<sweep>/.sweep.lock` so two `archer ablate` processes never run one sweep (the kernel
    drops the lock when the holder dies, so a killed sweep does not leave it stuck)."""
    from archer.core.runlock import hold_lock

    with hold_lock(
        directory / SWEEP_LOCK,
        what=f"sweep {directory}",
        hint="another 'archer ablate' is running it: wait for it to finish, or stop it with Ctrl-C",
    ):
        yield
