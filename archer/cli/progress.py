"""Training progress for humans: a Rich live display on a terminal, plain lines otherwise.

On a terminal the bar shows step/total, time left and the latest step's numbers (reward,
accuracy, entropy, KL, clip fraction, seconds per step and its split). When stdout is not a
terminal (CI, Slurm, `| tee`), every `log_every`-th step prints one plain line instead, so logs
stay readable. `ConsoleReporter` is the `archer.core.progress.Reporter` that `archer train`
hands to the engines (driver process only).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from archer.core.progress import Reporter, RunInfo


def progress_bar(label: str, field: str, console: Any) -> Any:
    """The one bar layout of training and warm-up: label, bar, n/total, elapsed, eta, `field`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn(f"{{task.fields[{field}]}}"),
        console=console,
        transient=False,
    )


# (metric key, label, format)
STEP_FIELDS = [
    ("reward/mean", "reward", "{:.3f}"),
    ("reward/accuracy", "acc", "{:.3f}"),
    ("rollout/entropy_mean", "ent", "{:.3f}"),
    ("actor/pg_clipfrac", "clip", "{:.3f}"),
    ("time/step", "s/step", "{:.2f}"),
]
# shown only when the step reports them: the KL loss to the reference (only with
# actor.use_kl_loss; a "kl 0.0000" without it would read as a measurement), agent mode's ARPO/AEPO
# branches taken and tool calls made
OPTIONAL_FIELDS = [
    ("actor/kl_loss", "kl", "{:.4f}"),
    ("agent/branches", "branches", "{:.0f}"),
    ("agent/tool_calls", "tools", "{:.0f}"),
]
TIME_FIELDS = [
    ("time/rollout", "rollout"),
    ("time/logprob", "logp"),
    ("time/update", "update"),
    ("time/trace", "trace"),
]
OPTIONAL_TIME_FIELDS = [("time/influence", "influence")]  # with influence.enable


def _fmt(metrics: dict[str, Any], key: str, fmt: str) -> str:
    v = metrics.get(key)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def _fields(metrics: dict[str, Any]) -> list[str]:
    fields = STEP_FIELDS + [f for f in OPTIONAL_FIELDS if f[0] in metrics]
    return [f"{label} {_fmt(metrics, key, fmt)}" for key, label, fmt in fields]


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _eta(start: tuple[float, int], now: float, done: int, total: int) -> str:
    """ "elapsed 0:01:10 eta 0:03:20", the rate measured since `start` (time, units done then);
    the same numbers the live bar shows, for logs."""
    t0, d0 = start
    elapsed = now - t0
    if done >= total:
        return f"elapsed {_clock(elapsed)}"
    if done <= d0 or elapsed <= 0:
        return f"elapsed {_clock(elapsed)} eta -:--:--"
    return f"elapsed {_clock(elapsed)} eta {_clock((total - done) * elapsed / (done - d0))}"


def format_step(step: int, total: int, metrics: dict[str, Any]) -> str:
    parts = [f"step {step}/{total}", *_fields(metrics)]
    times = TIME_FIELDS + [f for f in OPTIONAL_TIME_FIELDS if f[0] in metrics]
    split = " ".join(f"{label} {_fmt(metrics, key, '{:.2f}')}" for key, label in times)
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
            self._progress = progress_bar("train", "stats", self.console)
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


class ConsoleReporter(Reporter):
    """Renders a run's events: header, warm-up bar, training bar or lines, validation, notes."""

    def __init__(self, console: Any = None, *, live: bool | None = None):
        from rich.console import Console

        self.console = console or Console(highlight=False)
        self.live = self.console.is_terminal if live is None else live
        self._train: TrainingProgress | None = None
        self._warm: Any = None
        self._warm_task: Any = None
        self._warm_t0: tuple[float, int] | None = None  # (time, steps done) at the first report

    def note(self, text: str) -> None:
        if self._train is not None:
            self._train.log(text)
        else:
            self.console.print(text, markup=False, highlight=False)

    def run_started(self, info: RunInfo) -> None:
        from rich.markup import escape

        bits = [
            f"[bold]archer[/bold] {info.engine} engine",
            f"preset [cyan]{escape(str(info.preset))}[/cyan]",
        ]
        if info.device:
            bits.append(f"device {info.device}")
        if info.parameters:
            bits.append(f"{info.parameters:,} parameters")
        bits.append(f"{info.n_train} train / {info.n_val} val prompts")
        bits.append(f"run {escape(info.run_dir)}")
        self.console.print(" · ".join(bits))
        for line in info.details:
            self.console.print(line, markup=False, highlight=False)

    def warmup_progress(self, done: int, total: int, loss: float) -> None:
        if self.live:
            if self._warm is None:
                self._warm = progress_bar("warm-up", "loss", self.console)
                self._warm_task = self._warm.add_task("warm-up", total=total, loss="")
                self._warm.start()
            self._warm.update(self._warm_task, completed=done, loss=f"loss {loss:.3f}")
        else:
            import time

            now = time.monotonic()
            if self._warm_t0 is None or done <= 1:
                self._warm_t0 = (now, done)
            if done % 50 == 0 or done == total:
                print(
                    f"warm-up {done}/{total}  loss {loss:.3f}  {_eta(self._warm_t0, now, done, total)}",
                    flush=True,
                )

    def warmup_done(self) -> None:
        if self._warm is not None:
            self._warm.stop()
            self._warm = None

    def training_started(self, total_steps: int, start_step: int, log_every: int) -> None:
        self._train = TrainingProgress(
            total_steps, start_step=start_step, log_every=log_every, console=self.console, live=self.live
        )
        self._train.__enter__()

    def status(self, text: str) -> None:
        if self._train is not None:
            self._train.status(text)

    def step_done(self, step: int, metrics: dict[str, Any]) -> None:
        if self._train is not None:
            self._train.step_done(step, metrics)

    def validated(self, step: int, metrics: dict[str, Any]) -> None:
        acc = metrics.get("val/accuracy")
        if acc is None:
            return
        when = "before training" if step == 0 else f"at step {step}"
        self.note(f"validation {when}: accuracy {float(acc):.3f}")

    def training_ended(self) -> None:
        self.warmup_done()
        if self._train is not None:
            self._train.__exit__(None, None, None)
            self._train = None


class ConsoleTaskProgress:
    """A Rich bar over a task's units on a terminal; one plain line per advance otherwise (logs,
    CI). The `archer.core.evaluation.runner.TaskProgress` that `archer eval` hands to core."""

    def __init__(self, console: Any, *, live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self._progress: Any = None
        self._task: Any = None

    def start(self, total: int, done: int, *, label: str, unit: str) -> None:
        import time

        self.total, self.done, self.label, self.unit = total, done, label, unit
        self._t0 = time.time()
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
                TextColumn(f"[bold]{label}[/bold]"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(label, total=total, completed=done, stats="")

    def advance(self, k: int, stats: str) -> None:
        import time

        self.done += k
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, stats=stats)
        else:
            elapsed = time.time() - self._t0
            print(
                f"{self.label} {self.done}/{self.total} {self.unit}  {stats}  ({elapsed:.1f}s)",
                file=sys.stderr,
                flush=True,
            )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
