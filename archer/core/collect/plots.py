"""Plots of a collect table: PNG files with matplotlib (Agg, no display needed) and small
terminal plots with plotext. Both libraries are optional (`pip install -e '.[plot]'`).

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


def _series(t: CollectTable) -> list[tuple[str, dict[str, list[tuple[int, float]]]]]:
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
    series = _series(t)

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


class _Plotext:
    """Lines and bars as text with either plotext API: 5.x (module functions, `plt.plot`) or 6.x
    (`plt.figure.signal(...)`), since the plot extra allows both."""

    def __init__(self, mod: Any, width: int):
        self.plt = mod
        self.v5 = hasattr(mod, "plot") and hasattr(mod, "plotsize")
        self.width = width

    def lines(self, title: str, series: list[tuple[str, list[float], list[float]]], height: int = 14) -> str:
        plt = self.plt
        if self.v5:
            plt.clear_figure()
            plt.theme("clear")
            plt.plotsize(self.width, height)
            for label, xs, ys in series:
                plt.plot(xs, ys, label=label)
            plt.title(title)
            return plt.build()
        fig = plt.figure
        fig.clear()
        fig.plot_size(self.width, height)
        fig.theme("simple")  # no background colour: reads on dark and light terminals
        for label, xs, ys in series:
            fig.draw(fig.signal(xs, ys).label(label).lines())
        fig.legend(True)
        fig.title(title)
        return fig.build().string()

    def bars(self, title: str, values: list[float], height: int = 12) -> str:
        """Vertical bars numbered 1..n (run names are too long for an axis; a key follows)."""
        plt = self.plt
        labels = [str(i) for i in range(1, len(values) + 1)]
        if self.v5:
            plt.clear_figure()
            plt.theme("clear")
            plt.plotsize(self.width, height)
            plt.bar(labels, values, width=0.5)
            plt.title(title)
            return plt.build()
        fig = plt.figure
        fig.clear()
        fig.plot_size(self.width, height)
        fig.theme("simple")
        fig.draw(fig.bar(labels, values, width=0.5))
        fig.title(title)
        return fig.build().string()


def terminal_plots(t: CollectTable, console: Any) -> int:
    """Draw small plotext plots (reward per step, step time, AUC) on `console`; returns how many."""
    from rich.markup import escape
    from rich.text import Text

    px = _Plotext(require("plotext"), width=max(40, min(100, int(console.width))))
    drawn = 0

    def show(text: str, names: list[str] | None = None) -> None:
        nonlocal drawn
        console.print(Text.from_ansi(text))
        for i, name in enumerate(names or [], start=1):
            console.print(f"  [bold]{i}[/bold]  {escape(name)}")
        drawn += 1

    series = [
        (n, [float(s) for s, _ in c["reward/mean"]], [v for _, v in c["reward/mean"]])
        for n, c in _series(t)
        if c["reward/mean"]
    ]
    if series:
        show(
            px.lines("reward/mean per step", series, height=max(14, 2 * len(series) + 8))
        )  # room for the legend
    timed = [r for r in t.rows if r.get("step_s") is not None]
    if timed:
        show(px.bars("median s/step", [float(r["step_s"]) for r in timed]), [r["run"] for r in timed])
    scored = [r for r in t.rows if r.get("auc") is not None]
    if scored:
        show(
            px.bars("influence AUC (0.5 = chance)", [float(r["auc"]) for r in scored]),
            [r["run"] for r in scored],
        )
    return drawn
