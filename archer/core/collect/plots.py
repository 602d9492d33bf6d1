"""Plots of a collect table as PNG files with matplotlib (Agg, no display needed; the small
terminal plots are archer/cli/collect_plots.py). Both libraries are optional (`pip install -e '.[plot]'`).

Files written by `write_pngs` (each atomically, temp file + rename):
  reward.png         reward/mean, reward/accuracy (and val/accuracy when logged) per step, one line per run
  step_time.png      median step time per run, split into rollout / update / influence / other
  influence_auc.png  within-group accepted-vs-rejected AUC per run (0.5 = no separation)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from archer.errors import ArcherError

from .runs import MISSING
from .table import CollectTable, metric_series

HINT = "pip install -e '.[plot]'  (matplotlib and plotext)"
CURVES = [
    ("reward/mean", "reward", True),
    ("reward/accuracy", "accuracy", True),
    ("val/accuracy", "val accuracy", False),
]


def require(module: str) -> Any:
    """Import an optional plotting library or fail with one line naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ArcherError(
            f"plotting needs {module.split('.')[0]}, which is not installed", hint=HINT
        ) from None


def run_series(t: CollectTable) -> list[tuple[str, dict[str, list[tuple[int, float]]]]]:
    """Per run (missing runs left out): its name and the reward/accuracy curves as (step, value)."""
    out = []
    for e in t.entries:
        if e.status == MISSING:
            continue
        curves = {key: metric_series(e.metrics, (key,), training) for key, _, training in CURVES}
        out.append((e.name, curves))
    return out


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_pngs(t: CollectTable, out_dir: Path) -> list[Path]:
    """Write the PNGs into `out_dir` (created); returns the files written."""
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    series = run_series(t)

    present = [(k, label) for k, label, _ in CURVES if any(c[k] for _, c in series)]
    if present:
        fig = Figure(figsize=(6.5, 2.6 * len(present)))
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(present), 1, squeeze=False)[:, 0]
        for ax, (key, label) in zip(axes, present):
            for name, curves in series:
                pts = curves[key]
                if pts:
                    ax.plot(
                        [s for s, _ in pts],
                        [v for _, v in pts],
                        marker="o" if len(pts) < 30 else None,
                        markersize=3,
                        label=name,
                    )
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle("reward and accuracy per step")
        _save(fig, out_dir / "reward.png")
        written.append(out_dir / "reward.png")

    timed = [r for r in t.rows if r.get("step_s") is not None]
    if timed:
        fig = Figure(figsize=(6.5, 0.5 * len(timed) + 1.5))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        names = [r["run"] for r in timed]
        left = [0.0] * len(timed)
        for col, label in (("rollout_s", "rollout"), ("update_s", "update"), ("influence_s", "influence")):
            vals = [float(r.get(col) or 0.0) for r in timed]
            ax.barh(names, vals, left=left, label=label)
            left = [a + b for a, b in zip(left, vals)]
        other = [max(0.0, float(r["step_s"]) - done) for r, done in zip(timed, left)]
        ax.barh(names, other, left=left, label="other")
        ax.invert_yaxis()
        ax.set_xlabel("median seconds per step")
        ax.legend(fontsize=7, loc="best")
        ax.set_title("step time per run")
        _save(fig, out_dir / "step_time.png")
        written.append(out_dir / "step_time.png")

    scored = [r for r in t.rows if r.get("auc") is not None]
    if scored:
        fig = Figure(figsize=(6.5, 0.5 * len(scored) + 1.5))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.barh([r["run"] for r in scored], [r["auc"] for r in scored], color="tab:purple")
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel("within-group AUC, accepted vs rejected by mean influence (0.5 = chance)")
        ax.set_title("influence AUC per run")
        _save(fig, out_dir / "influence_auc.png")
        written.append(out_dir / "influence_auc.png")
    return written
