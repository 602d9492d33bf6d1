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


class MetricsLog:
    """Appends one JSON line per step; fans out to tensorboard and W&B when enabled."""

    def __init__(
        self, run_dir: Path, *, logging_cfg: Any = None, run_name: str = "", config: dict | None = None
    ):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        self._tb = None
        self._wandb = None
        if logging_cfg is not None and logging_cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError as e:  # tensorboard not installed
                from archer.errors import UsageError

                raise UsageError(
                    "trainer.logging.tensorboard=true needs the tensorboard package",
                    hint="pip install tensorboard, or set trainer.logging.tensorboard=false",
                ) from e
        if logging_cfg is not None and logging_cfg.wandb:
            try:
                import wandb
            except ImportError as e:
                from archer.errors import UsageError

                raise UsageError(
                    "trainer.logging.wandb=true needs the wandb package",
                    hint="pip install wandb, or set trainer.logging.wandb=false",
                ) from e
            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(
                project=logging_cfg.wandb_project,
                name=run_name,
                dir=str(run_dir),
                config=config or {},
                resume="allow",
            )

    @staticmethod
    def truncate(run_dir: Path, keep_through_step: int) -> None:
        """Drop lines of steps after `keep_through_step` (resume from a checkpoint)."""
        rows = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= keep_through_step]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_text(Path(run_dir) / METRICS_FILE, text)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": int(step)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        numeric = {
            k: v
            for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
        }
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


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
