"""What a person sees while `archer ablate` runs: a Rich live table on a terminal, plain lines otherwise.

The runner reports events (a case starts, makes progress, is retried, ends); on a terminal the
table is redrawn (state, step, s/step, elapsed per case), off a terminal each event that matters
prints one line, and progress at most every `progress_every` seconds, so CI logs stay short.
"""

from __future__ import annotations

import time
from typing import Any

from archer.core.sweep.grid import settings_label
from archer.core.sweep.state import DONE, FAILED, INTERRUPTED, PENDING, RUNNING, CaseRecord, Sweep

STYLE = {
    PENDING: "dim",
    RUNNING: "yellow",
    DONE: "green",
    FAILED: "red",
    INTERRUPTED: "magenta",
    "retried": "cyan",
}


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def state_label(rec: CaseRecord) -> str:
    """pending / running / retried (running its out-of-memory retry) / done / failed / interrupted."""
    retried = len(rec.attempts) > 1 and any(a.oom for a in rec.attempts)
    if rec.status == RUNNING and rec.attempts and rec.attempts[-1].offload and retried:
        return "retried"
    if rec.status == DONE and retried:
        return "done (retried)"
    return rec.status


def case_table(sweep: Sweep, started: dict[str, float] | None = None, title: str | None = None) -> Any:
    from rich.markup import escape
    from rich.table import Table

    started = started or {}
    table = Table(title=title, title_justify="left", expand=False)
    for col, kw in (
        ("#", {"justify": "right"}),
        ("case", {"overflow": "fold"}),
        ("settings", {"overflow": "fold"}),
        ("state", {}),
        ("step", {"justify": "right"}),
        ("s/step", {"justify": "right"}),
        ("elapsed", {"justify": "right"}),
        ("note", {"overflow": "fold", "max_width": 60}),
    ):
        table.add_column(col, **kw)
    for i, rec in enumerate(sweep.cases, start=1):
        label = state_label(rec)
        style = STYLE.get(label.split(" ")[0], "")
        if rec.status == RUNNING and rec.id in started:
            elapsed = time.monotonic() - started[rec.id]
        else:
            elapsed = rec.seconds
        total = f"/{rec.total_steps}" if rec.total_steps else ""
        step = f"{rec.steps}{total}" if rec.steps or rec.status != PENDING else "-"
        sps = f"{rec.step_seconds:.2f}" if rec.step_seconds is not None else "-"
        settings = settings_label(rec.settings)
        note = rec.reason or ""
        if len(rec.attempts) > 1 and not note:
            note = f"{len(rec.attempts)} attempts"
        table.add_row(
            str(i),
            escape(rec.id),
            escape(settings),
            f"[{style}]{escape(label)}[/]" if style else escape(label),
            step,
            sps,
            fmt_seconds(elapsed),
            escape(note),
        )
    return table


class SweepDisplay:
    """Context manager fed by `SweepRunner` events (see archer.core.sweep.runner.Display)."""

    def __init__(self, console: Any, *, live: bool | None = None, progress_every: float = 30.0):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.progress_every = progress_every
        self._started: dict[str, float] = {}
        self._last_progress: dict[str, float] = {}
        self._sweep: Sweep | None = None
        self._live: Any = None

    def __enter__(self) -> SweepDisplay:
        if self.live:
            from rich.live import Live

            self._live = Live(
                console=self.console,
                refresh_per_second=2,
                get_renderable=self._render,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def _render(self) -> Any:
        from rich.text import Text

        if self._sweep is None:
            return Text("starting…", style="dim")
        s = self._sweep
        counts = {
            k: sum(c.status == k for c in s.cases) for k in (DONE, FAILED, RUNNING, PENDING, INTERRUPTED)
        }
        title = (
            f"[bold]archer ablate[/bold] · {s.dir} · {counts[DONE]} done, {counts[FAILED]} failed, "
            f"{counts[PENDING]} pending"
        )
        return case_table(s, self._started, title=title)

    def _index(self, sweep: Sweep, rec: CaseRecord) -> str:
        return f"[{sweep.cases.index(rec) + 1}/{len(sweep.cases)}] {rec.id}"

    def event(self, sweep: Sweep, rec: CaseRecord | None, kind: str, text: str = "") -> None:
        self._sweep = sweep
        now = time.monotonic()
        if kind == "start" and rec is not None:
            self._started[rec.id] = now
            self._last_progress[rec.id] = now
        if self._live is not None:
            if text:
                self.console.print(text, markup=False, highlight=False, style="dim")
            self._live.refresh()
            return
        if rec is None:
            return
        head = self._index(sweep, rec)
        att = rec.attempts[-1] if rec.attempts else None
        if kind == "start" and att is not None:
            how = (
                " (continuing from its checkpoint)"
                if att.resumed
                else (" (with grad offload)" if att.offload else "")
            )
            self._line(f"{head}: running, attempt {att.n}{how} · log {sweep.case_dir(rec) / 'train.log'}")
        elif kind == "progress":
            if now - self._last_progress.get(rec.id, 0.0) >= self.progress_every and rec.steps:
                self._last_progress[rec.id] = now
                sps = f", {rec.step_seconds:.2f} s/step" if rec.step_seconds is not None else ""
                self._line(
                    f"{head}: step {rec.steps}/{rec.total_steps or '?'}{sps}, "
                    f"{fmt_seconds(now - self._started.get(rec.id, now))}"
                )
        elif kind in ("retry", "stopping"):
            self._line(f"{head}: {text}")
        elif kind == DONE:
            sps = f", {rec.step_seconds:.2f} s/step" if rec.step_seconds is not None else ""
            self._line(f"{head}: {state_label(rec)} in {fmt_seconds(rec.seconds)} ({rec.steps} steps{sps})")
        elif kind in (FAILED, INTERRUPTED):
            self._line(f"{head}: {rec.status} after {fmt_seconds(rec.seconds)}: {rec.reason}")

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
