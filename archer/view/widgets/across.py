"""Across steps: entropy mean, reward and accuracy per step as sparklines (from the manifest),
the influence AUC per step and a step x position-bin map of mean entropy (both computed by a
worker, one step at a time)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, Sparkline, Static

from archer.view.colors import fmt, legend, sequential_scale, style_lut
from archer.view.model import EntropyMap, StepRow

SERIES = (("entropy_mean", "entropy mean"), ("reward_mean", "reward mean"), ("accuracy", "accuracy"))


def series(rows: Sequence[StepRow], attr: str) -> tuple[list[float], int]:
    """Values per step for a sparkline (unknown ones drawn at the minimum) and how many are unknown."""
    vals = np.array([getattr(r, attr) for r in rows], dtype=np.float64)
    ok = np.isfinite(vals)
    if not ok.any():
        return [0.0] * len(rows), len(rows)
    return np.where(ok, vals, vals[ok].min()).tolist(), int((~ok).sum())


def map_text(emap: EntropyMap) -> Text:
    """The step x position map as coloured cells, one line per step."""
    t = Text(no_wrap=True)
    if not emap.steps or emap.n_bins == 0:
        t.append("no steps", style="dim")
        return t
    finite = emap.means[np.isfinite(emap.means)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (math.nan, math.nan)
    scale = sequential_scale(lo, hi, "all steps")
    lut = style_lut("sequential")
    width = max(len(str(s)) for s in emap.steps)
    t.append(" " * (width + 6) + "0", style="dim")
    end = f"{emap.bin_size * emap.n_bins}"
    t.append(" " * max(1, emap.n_bins - 1 - len(end)) + end + "  token position\n", style="dim")
    for i, step in enumerate(emap.steps):
        t.append(f"step {step:>{width}} ", style="bold")
        row = emap.means[i]
        q = scale.quantize(np.nan_to_num(row, nan=lo if math.isfinite(lo) else 0.0)).tolist()
        for v, k in zip(row.tolist(), q):
            if math.isnan(v):
                t.append("·", style="dim")
            else:
                t.append(" ", style=Style(bgcolor=lut[k].bgcolor))
        t.append("\n")
    t.append_text(legend(scale, "mean H", width=min(24, max(8, emap.n_bins // 2))))
    t.append(f"\nbins of {emap.bin_size} tokens; · = no token at that position", style="dim")
    return t


class AcrossSteps(VerticalScroll):
    """The across-steps tab."""

    def compose(self):
        yield Static(
            "Per step (from the manifest; influence AUC, accepted vs rejected within a group by mean "
            "influence, 0.5 = chance, is read with the map)",
            classes="section-title",
        )
        for key, label in SERIES:
            with Horizontal(classes="spark-row"):
                yield Label(label, classes="spark-label")
                yield Sparkline([], id=f"spark-{key}", summary_function=max)
                yield Label("", id=f"range-{key}", classes="spark-range")
        with Horizontal(classes="spark-row"):
            yield Label("influence AUC", classes="spark-label")
            yield Sparkline([], id="spark-auc", summary_function=max)
            yield Label("", id="range-auc", classes="spark-range")
        yield Static("Mean entropy by token position (steps x position bins)", classes="section-title")
        yield Static("open this tab to compute it", id="entropy-map")

    def set_steps(self, rows: Sequence[StepRow]) -> None:
        for key, _ in SERIES:
            vals, unknown = series(rows, key)
            self.query_one(f"#spark-{key}", Sparkline).data = vals
            raw = [getattr(r, key) for r in rows]
            fin = [v for v in raw if math.isfinite(v)]
            txt = f"{fmt(min(fin))} .. {fmt(max(fin))}  last {fmt(raw[-1])}" if fin else "n/a"
            if unknown and fin:
                txt += f"  ({unknown} unknown)"
            self.query_one(f"#range-{key}", Label).update(Text(f"{len(rows)} steps  {txt}"))
        self.query_one("#range-auc", Label).update(Text("computed with the map below", style="dim"))

    def set_progress(self, done: int, total: int) -> None:
        self.query_one("#entropy-map", Static).update(
            Text(f"reading entropy: step {done}/{total}", style="dim")
        )

    def set_map(self, emap: EntropyMap) -> None:
        self.query_one("#entropy-map", Static).update(map_text(emap))
        auc = np.full(len(emap.steps), np.nan) if emap.auc is None else emap.auc
        ok = np.isfinite(auc)
        spark = self.query_one("#spark-auc", Sparkline)
        label = self.query_one("#range-auc", Label)
        if not ok.any():
            spark.data = []
            label.update(Text("no step has accepted and rejected responses with influence", style="dim"))
            return
        spark.data = np.where(ok, auc, auc[ok].min()).tolist()
        last = emap.steps[int(np.flatnonzero(ok)[-1])]
        n = int(ok.sum())
        label.update(
            Text(
                f"{n} step{'s' if n != 1 else ''}  {fmt(float(auc[ok].min()))} .. "
                f"{fmt(float(auc[ok].max()))}  step {last}: {fmt(float(auc[ok][-1]))}"
            )
        )

    def set_error(self, message: str) -> None:
        self.query_one("#entropy-map", Static).update(Text(message, style="red"))
