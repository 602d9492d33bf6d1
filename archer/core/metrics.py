"""Per-step metrics: `metrics.jsonl` in the run directory, plus optional tensorboard / W&B sinks.

Both engines log through `MetricsLog`, so `archer collect` and the viewer read one format: one JSON
object per line with at least `step`, written and flushed at the end of each step. On resume the
file is cut back to the checkpoint's step (atomically) so no step appears twice.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from archer.core.run import METRICS_FILE, atomic_write_text
from archer.core.storage import writing


def _clean(value: Any) -> Any:
    """JSON-safe scalars: numpy/torch numbers become floats, NaN/inf become null."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return None
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All whole lines of a run's metrics.jsonl (a torn last line from a crash is ignored)."""
    path = Path(run_dir) / METRICS_FILE
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class Sinks:
    """tensorboard and W&B, for what a step has beyond scalars: sample generations (tensorboard
    text, a W&B table that grows by the rows of each log) and histograms (per-token entropy and
    influence). `MetricsLog` opens its own; verl's trainer attaches to the W&B run verl's tracker
    started and to its tensorboard folder."""

    def __init__(self, tb: Any = None, wandb_mod: Any = None):
        self.tb = tb
        self.wandb = wandb_mod  # the wandb module, with a run started
        self._sample_rows: list[list[Any]] = []

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wandb is not None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def samples(self, step: int, rows: list[tuple[str, str, float]]) -> None:
        """Sample generations of a step: (prompt, response, reward)."""
        if not rows:
            return
        if self.tb is not None:
            self.tb.add_text("samples", samples_markdown(step, rows), step)
        if self.wandb is not None:
            self._sample_rows += [[step, p, r, float(w)] for p, r, w in rows]
            # a new Table each time (W&B shows a logged table as it was when logged)
            table = self.wandb.Table(columns=["step", "prompt", "response", "reward"], data=self._sample_rows)
            self.wandb.log({"samples": table}, step=step)

    def histograms(self, step: int, values: dict[str, Any]) -> None:
        """Distributions of a step (name -> 1-D array of values); empty arrays are skipped."""
        import numpy as np

        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        arrays = {k: a[np.isfinite(a)] for k, a in arrays.items()}
        arrays = {k: a for k, a in arrays.items() if a.size}
        if self.tb is not None:
            for k, a in arrays.items():
                self.tb.add_histogram(k, a, step)
        if self.wandb is not None and arrays:
            self.wandb.log({k: self.wandb.Histogram(a) for k, a in arrays.items()}, step=step)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self, *, finish_wandb: bool = True) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None and finish_wandb:
            self.wandb.finish()


def samples_markdown(step: int, rows: list[tuple[str, str, float]]) -> str:
    """Sample generations as markdown (tensorboard's text plugin renders it)."""

    def block(text: str) -> str:
        return "\n".join("    " + line for line in (text or "").splitlines() or [""])

    parts = [f"**step {step}**", ""]
    for i, (prompt, response, reward) in enumerate(rows, 1):
        parts += [f"**sample {i}** (reward {float(reward):g})", "", "prompt:", "", block(prompt), ""]
        parts += ["response:", "", block(response), ""]
    return "\n".join(parts)


def pick_samples(record: Any, decode: Any, count: int) -> list[tuple[str, str, float]]:
    """Up to `count` responses of a step's record (archer.core.rollout.record.StepRecord), one per
    prompt group first, as (prompt, response, reward) text; `decode` turns token ids into text."""
    order: list[int] = []
    seen: set[Any] = set()
    for i, g in enumerate(record.group_index):
        if g not in seen:
            seen.add(g)
            order.append(i)
    first = set(order)
    order += [i for i in range(len(record)) if i not in first]
    rows = []
    for i in order[:count]:
        ids = lambda a: [int(t) for t in a]  # noqa: E731 - plain ints (fast tokenizers refuse numpy ints)
        prompt, response = decode(ids(record.prompt_ids[i])), decode(ids(record.response_ids[i]))
        rows.append((prompt, response, float(record.reward[i])))
    return rows


def record_histograms(record: Any) -> dict[str, Any]:
    """The per-token values of a step worth a histogram: entropy of every response token, and
    influence of the traced responses (where influence ran)."""
    import numpy as np

    out: dict[str, Any] = {}
    if record.entropy:
        out["trace/entropy"] = np.concatenate([np.asarray(e, dtype=np.float64) for e in record.entropy])
    scores = [np.asarray(x, dtype=np.float64) for x in (record.influence or []) if x is not None]
    if scores:
        out["trace/influence"] = np.concatenate(scores)
    return out


def open_sinks(run_dir: Path, logging_cfg: Any, *, run_name: str = "", config: dict | None = None) -> Sinks:
    """The sinks `trainer.logging` asks for (a clear error naming the package when one is missing)."""
    from archer.errors import UsageError

    tb = wb = None
    if logging_cfg is not None and logging_cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError as e:  # tensorboard not installed
            raise UsageError(
                "trainer.logging.tensorboard=true needs the tensorboard package",
                hint="pip install -e '.[tensorboard]', or set trainer.logging.tensorboard=false",
            ) from e
    if logging_cfg is not None and logging_cfg.wandb:
        try:
            import wandb
        except ImportError as e:
            raise UsageError(
                "trainer.logging.wandb=true needs the wandb package",
                hint="pip install -e '.[wandb]', or set trainer.logging.wandb=false",
            ) from e
        os.environ.setdefault("WANDB_MODE", "offline")
        wandb.init(
            project=logging_cfg.wandb_project,
            entity=logging_cfg.get("wandb_entity") or None,
            group=logging_cfg.get("wandb_group") or None,
            tags=list(logging_cfg.get("wandb_tags") or []) or None,
            name=run_name,
            dir=str(run_dir),
            config=config or {},
            resume="allow",
        )
        wb = wandb
    return Sinks(tb, wb)


class MetricsLog:
    """Appends one JSON line per step; fans out to tensorboard and W&B when enabled, with sample
    generations and histograms every `samples_every` / `histograms_every` steps (`log_record`)."""

    def __init__(
        self, run_dir: Path, *, logging_cfg: Any = None, run_name: str = "", config: dict | None = None
    ):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        self.sinks = open_sinks(Path(run_dir), logging_cfg, run_name=run_name, config=config)
        get = (lambda k, d: logging_cfg.get(k, d)) if logging_cfg is not None else (lambda k, d: d)
        self.samples_every = int(get("samples_every", 0))
        self.samples = int(get("samples", 4))
        self.histograms_every = int(get("histograms_every", 0))

    @staticmethod
    def truncate(run_dir: Path, keep_through_step: int) -> None:
        """Drop lines of steps after `keep_through_step` (resume from a checkpoint)."""
        rows = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= keep_through_step]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_text(Path(run_dir) / METRICS_FILE, text)

    def wants_record(self, step: int) -> bool:
        """Whether `log_record` would log anything at this step (so the caller builds the record)."""
        if not self.sinks.active:
            return False
        due = lambda every: every > 0 and step % every == 0  # noqa: E731
        return due(self.samples_every) or due(self.histograms_every)

    def log_record(self, step: int, record: Any, decode: Any) -> None:
        """Sample generations and histograms of a step, where due."""
        if not self.sinks.active:
            return
        if self.samples_every > 0 and step % self.samples_every == 0:
            self.sinks.samples(step, pick_samples(record, decode, self.samples))
        if self.histograms_every > 0 and step % self.histograms_every == 0:
            self.sinks.histograms(step, record_histograms(record))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": int(step)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        with writing(self.path):
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        numeric = {
            k: v
            for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
        }
        self.sinks.scalars(step, numeric)

    def close(self) -> None:
        with writing(self.path):
            self._file.close()
        self.sinks.close()


def validation_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that carry a validation result (`val/accuracy`), in order."""
    return [r for r in rows if r.get("val/accuracy") is not None]


class MetricsFollower:
    """Follows a run's metrics.jsonl from another thread and hands each new whole line to
    `on_row`: how the verl driver, whose trainer runs in a Ray actor, learns what the run logged
    (validation results) while `run_ppo` blocks. Rows up to `after_step` (a resumed run's past)
    are skipped; a file cut back on resume is read again from its start."""

    def __init__(self, run_dir: str | os.PathLike, on_row: Any, *, after_step: int = -1, poll_s: float = 0.5):
        import threading

        self.path = Path(run_dir) / METRICS_FILE
        self.on_row = on_row
        self.after_step = after_step
        self.poll_s = poll_s
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="archer-metrics-follower", daemon=True)

    def start(self) -> MetricsFollower:
        self._thread.start()
        return self

    def poll(self) -> None:
        """Read what was appended since the last call (also callable without the thread)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self._offset:  # replaced by a shorter file (MetricsLog.truncate)
            self._offset = 0
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for line in data[: end + 1].splitlines():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            step = int(row.get("step", 0)) if isinstance(row, dict) else -1
            if step > self.after_step:
                self.after_step = step
                self.on_row(row)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def stop(self) -> None:
        """Stop the thread after one last read (lines written just before the run ended)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.poll()


def mean(values: Iterable[float]) -> float:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else float("nan")
