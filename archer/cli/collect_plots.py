"""`archer collect --plot-terminal`: small plotext plots (reward per step, step time, influence AUC)
drawn on the console; the PNG files are archer/core/collect/plots.py."""

from __future__ import annotations

from typing import Any

from archer.core.collect.plots import require, run_series
from archer.core.collect.table import CollectTable


class Plotext:
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

    px = Plotext(require("plotext"), width=max(40, min(100, int(console.width))))
    drawn = 0

    def show(text: str, names: list[str] | None = None) -> None:
        nonlocal drawn
        console.print(Text.from_ansi(text))
        for i, name in enumerate(names or [], start=1):
            console.print(f"  [bold]{i}[/bold]  {escape(name)}")
        drawn += 1

    series = [
        (n, [float(s) for s, _ in c["reward/mean"]], [v for _, v in c["reward/mean"]])
        for n, c in run_series(t)
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
