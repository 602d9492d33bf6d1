"""Tab 4: the step's influence statistics (within-group AUC of accepted vs rejected, share of
positive mass, coverage, what the trace's settings approximate) and its highest and lowest entropy
and influence tokens, each in a window of its text; Enter jumps to one."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.widgets import Static, TabPane

from archer.view import messages as msg
from archer.view.colors import fmt
from archer.view.model import StepStats
from archer.view.widgets.linetable import LineTable
from archer.view.widgets.tables import TopKTable


class TopKTab(TabPane):
    """Shows the StepStats the app loads (a worker reads the step's token columns once)."""

    def __init__(self, title: str, **kw) -> None:
        super().__init__(title, **kw)
        self.step: int | None = None  # whose hits the table lists

    def compose(self):
        yield Static(id="topk-note")
        yield TopKTable(id="topk-table")

    @property
    def table(self) -> TopKTable:
        return self.query_one("#topk-table", TopKTable)

    def clear(self) -> None:
        self.step = None
        self.table.clear()
        self.table.loading = False
        self.query_one("#topk-note", Static).update("")

    def set_loading(self) -> None:
        self.table.loading = True

    def show_stats(
        self, s: StepStats, texts: dict[tuple[int, int], tuple[str, str, str]], notes: list[str] = ()
    ) -> None:
        self.step = s.step
        self.table.loading = False
        self.table.show(s.top, texts)
        self.query_one("#topk-note", Static).update(stats_text(s, notes))

    def show_failed(self, step: int, message: str) -> None:
        self.table.loading = False
        self.query_one("#topk-note", Static).update(Text(f"cannot rank step {step}: {message}", style="red"))

    @on(LineTable.Selected, "#topk-table")
    def _selected(self, event: LineTable.Selected) -> None:
        event.stop()
        hit = self.table.hits.get(event.key)
        if hit is not None and self.step is not None:
            self.post_message(msg.JumpTo(self.step, hit.row, hit.pos))


def stats_text(s: StepStats, notes: list[str] = ()) -> Text:
    """The lines above the top-K table: tokens, influence statistics, fidelity notes."""
    if s.tokens == 0:
        return Text(f"step {s.step} has no tokens: nothing to rank", style="yellow")
    t = Text(f"step {s.step}: {s.tokens} tokens; ")
    if s.influence_tokens == 0:
        t.append("no influence captured in this step (entropy only)", style="dim")
        t.append("   enter: open the token", style="dim")
        return t
    t.append(f"influence captured for {s.influence_tokens} tokens")
    if s.influence_row_tokens:
        t.append(f" ({100 * s.influence_tokens / s.influence_row_tokens:.0f}% of their responses' tokens)")
    t.append("   enter: open the token", style="dim")
    t.append("\ninfluence  ", style="bold")
    if s.auc_groups:
        t.append(f"AUC accepted vs rejected {fmt(s.auc)}")
        t.append(
            f" (mean of {s.auc_groups} group{'s' if s.auc_groups != 1 else ''}; 0.5 = chance)", style="dim"
        )
    else:
        t.append("AUC: no group has both accepted and rejected responses with influence", style="dim")
    if s.influence_positive_share == s.influence_positive_share:  # not NaN
        t.append(f"  ·  positive mass {100 * s.influence_positive_share:.0f}%")
        t.append(" (share of |influence| on tokens > 0)", style="dim")
    if notes:
        t.append("\nsettings  ", style="bold")
        t.append(" · ".join(notes), style="dim")
    return t
