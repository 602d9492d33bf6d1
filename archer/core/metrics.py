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
        with writing(self.path):
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
        with writing(self.path):
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def mean(values: Iterable[float]) -> float:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else float("nan")
