"""What a training run tells whoever runs it, as calls on a `Reporter` (core never prints).

The trainers call these methods; the default `Reporter` ignores them, so a trainer used as a
library is silent. `archer train` passes `archer.cli.progress.ConsoleReporter`, which draws the
Rich progress bar on a terminal and plain lines otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """Facts about a run known once it is set up (the CLI's header line)."""

    engine: str
    preset: str | None
    run_dir: str
    device: str = ""
    parameters: int = 0
    n_train: int = 0
    n_val: int = 0
    details: list[str] = field(default_factory=list)  # extra lines (e.g. the agent's tools)


@dataclass
class TrainResult:
    """What `archer train` reports at the end of a run, on either engine (the CLI renders it)."""

    run_dir: Path
    setup_seconds: float
    train_seconds: float
    first_val: dict[str, float]
    last_val: dict[str, float]
    trace_dir: Path | None
    warmup_source: str


class Reporter:
    """Training events; every method is optional to implement."""

    def note(self, text: str) -> None:
        """A line worth keeping (resumed from…, warm-up reused from the cache…)."""

    def run_started(self, info: RunInfo) -> None:
        """Set-up is done; training starts."""

    def warmup_progress(self, done: int, total: int, loss: float) -> None:
        """One supervised warm-up step finished."""

    def warmup_done(self) -> None:
        """The warm-up loop ended (or was skipped)."""

    def training_started(self, total_steps: int, start_step: int, log_every: int) -> None:
        """The RL loop starts (at `start_step` when resumed)."""

    def status(self, text: str) -> None:
        """What the run is doing now (validating…, checkpoint…)."""

    def step_done(self, step: int, metrics: dict[str, Any]) -> None:
        """A training step finished with these metrics."""

    def validated(self, step: int, metrics: dict[str, Any]) -> None:
        """Validation ran after `step` (0: before training)."""

    def training_ended(self) -> None:
        """The RL loop ended (finished, interrupted or failed)."""
