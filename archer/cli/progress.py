"""Training progress for humans: a Rich live display on a terminal, plain lines otherwise.

On a terminal the bar shows step/total, time left and the latest step's numbers (reward,
accuracy, entropy, KL, clip fraction, seconds per step and its split). When stdout is not a
terminal (CI, Slurm, `| tee`), every `log_every`-th step prints one plain line instead, so logs
stay readable. Both engines drive it from the driver process only.
"""

from __future__ import annotations

import math
import sys
from typing import Any

# (metric key, label, format)
STEP_FIELDS = [
    ("reward/mean", "reward", "{:.3f}"),
    ("reward/accuracy", "acc", "{:.3f}"),
    ("rollout/entropy_mean", "ent", "{:.3f}"),
    ("actor/kl", "kl", "{:.4f}"),
    ("actor/pg_clipfrac", "clip", "{:.3f}"),
    ("time/step", "s/step", "{:.2f}"),
]
# shown only when the step reports them (agent mode: ARPO/AEPO branches taken, tool calls made)
OPTIONAL_FIELDS = [
    ("agent/branches", "branches", "{:.0f}"),
    ("agent/tool_calls", "tools", "{:.0f}"),
]
TIME_FIELDS = [
    ("time/rollout", "rollout"),
    ("time/logprob", "logp"),
    ("time/update", "update"),
    ("time/trace", "trace"),
]


def _fmt(metrics: dict[str, Any], key: str, fmt: str) -> str:
    v = metrics.get(key)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def _fields(metrics: dict[str, Any]) -> list[str]:
    fields = STEP_FIELDS + [f for f in OPTIONAL_FIELDS if f[0] in metrics]
    return [f"{label} {_fmt(metrics, key, fmt)}" for key, label, fmt in fields]


def format_step(step: int, total: int, metrics: dict[str, Any]) -> str:
    parts = [f"step {step}/{total}", *_fields(metrics)]
    split = " ".join(f"{label} {_fmt(metrics, key, '{:.2f}')}" for key, label in TIME_FIELDS)
    return "  ".join(parts) + f"  ({split})"


class TrainingProgress:
    """Context manager: `with TrainingProgress(total, start=k) as p: p.step_done(step, metrics)`."""

    def __init__(
        self,
        total_steps: int,
        *,
        start_step: int = 0,
        log_every: int = 1,
        console: Any = None,
        live: bool | None = None,
    ):
        from rich.console import Console

        self.total = total_steps
        self.start = start_step
        self.log_every = max(1, log_every)
        self.console = console or Console(highlight=False)
        self.live = self.console.is_terminal if live is None else live
        self._progress = None
        self._task = None

    def __enter__(self) -> TrainingProgress:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train[/bold]"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=self.total, completed=self.start, stats="starting…"
            )
        return self

    def status(self, text: str) -> None:
        """A short note about what is happening (rollout, validation, checkpoint)."""
        if self._progress is not None:
            self._progress.update(self._task, stats=text)

    def log(self, text: str) -> None:
        """A line that stays in the scrollback above the bar."""
        self.console.print(text, markup=False, highlight=False)

    def step_done(self, step: int, metrics: dict[str, Any]) -> None:
        line = format_step(step, self.total, metrics)
        if self._progress is not None:
            short = "  ".join(_fields(metrics))
            self._progress.update(self._task, completed=step, stats=short)
            if step % self.log_every == 0:
                self._progress.console.print(line, markup=False, highlight=False, style="dim")
        elif step % self.log_every == 0 or step == self.total:
            print(line, file=sys.stdout, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
