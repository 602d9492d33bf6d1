"""Tab 4: the step's influence statistics (within-group AUC of accepted vs rejected, share of
positive mass, coverage, what the trace's settings approximate) and its highest and lowest entropy
and influence tokens, each in a window of its text; or, after a search, the matches of a text in
every response of the step. Enter jumps to one."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.containers import Horizontal
from textual.widgets import Input, Label, Static, TabPane

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
        self.query = ""  # the step search shown instead of the extremes ("" = the extremes)
        self._extremes: tuple | None = None  # (stats, texts, notes) to go back to

    def compose(self):
        yield Static(id="topk-note")
        with Horizontal(id="step-find-bar"):
            yield Label("find in step", classes="bar-label")
            yield Input(
                placeholder="text in any response (enter; empty: the extremes)", id="step-find", compact=True
            )
            yield Label("", id="step-find-count", classes="bar-label")
        yield TopKTable(id="topk-table")

    @property
    def table(self) -> TopKTable:
        return self.query_one("#topk-table", TopKTable)

    def clear(self) -> None:
        self.step = None
        self.query = ""
        self._extremes = None
        self.query_one("#step-find-count", Label).update("")
        self.table.clear()
        self.table.loading = False
        self.query_one("#topk-note", Static).update("")

    def set_loading(self) -> None:
        self.table.loading = True

    def show_stats(
        self, s: StepStats, texts: dict[tuple[int, int], tuple[str, str, str]], notes: list[str] = ()
    ) -> None:
        self._extremes = (s, texts, list(notes))
        self.query_one("#topk-note", Static).update(stats_text(s, notes))
        if not self.query or self.step != s.step:
            self.show_extremes()

    def show_extremes(self) -> None:
        """The step's extremes again (after a search is cleared)."""
        self.query = ""
        self.query_one("#step-find-count", Label).update("")
        self.table.loading = False
        if self._extremes is not None:
            s, texts, _ = self._extremes
            self.step = s.step
            self.table.show(s.top, texts)

    def set_searching(self, query: str) -> None:
        self.query_one("#step-find-count", Label).update(Text(f"searching for {query!r} …", style="dim"))
        self.table.loading = True

    def show_matches(self, step: int, query: str, hits: list, total: int, texts: dict) -> None:
        self.step = step
        self.query = query
        self.table.loading = False
        self.table.show({"match": hits}, texts)
        shown = f"{total} match{'es' if total != 1 else ''}" if hits else "no match"
        if total > len(hits):
            shown += f" (first {len(hits)} listed)"
        rows = len({h.row for h in hits})
        if hits:
            shown += f" in {rows} response{'s' if rows != 1 else ''}"
        self.query_one("#step-find-count", Label).update(Text(shown))

    def find_text(self) -> str:
        return self.query_one("#step-find", Input).value.strip()

    def focus_find(self) -> None:
        self.query_one("#step-find", Input).focus()

    @on(Input.Submitted, "#step-find")
    def _find(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(msg.StepSearchWanted(event.value.strip()))

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
