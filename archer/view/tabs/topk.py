"""Tab 4: the step's highest and lowest entropy and influence tokens; Enter jumps to one."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.widgets import Static, TabPane

from archer.view import messages as msg
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

    def show_stats(self, s: StepStats, texts: dict[tuple[int, int], str]) -> None:
        self.step = s.step
        self.table.loading = False
        self.table.show(s.top, texts)
        note = Text(f"step {s.step}: {s.tokens} tokens; ")
        if s.tokens == 0:
            note = Text(f"step {s.step} has no tokens: nothing to rank", style="yellow")
        elif s.influence_tokens == 0:
            note.append("no influence captured in this step (entropy only)", style="dim")
        else:
            note.append(f"influence captured for {s.influence_tokens} tokens")
        note.append("   enter: open the token", style="dim")
        self.query_one("#topk-note", Static).update(note)

    def show_failed(self, step: int, message: str) -> None:
        self.table.loading = False
        self.query_one("#topk-note", Static).update(Text(f"cannot rank step {step}: {message}", style="red"))

    @on(LineTable.Selected, "#topk-table")
    def _selected(self, event: LineTable.Selected) -> None:
        event.stop()
        hit = self.table.hits.get(event.key)
        if hit is not None and self.step is not None:
            self.post_message(msg.JumpTo(self.step, hit.row, hit.pos))
