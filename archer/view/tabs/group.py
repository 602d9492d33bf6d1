"""Tab 5: every response to the current response's prompt, accepted ones marked."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual import on
from textual.widgets import Static, TabPane

from archer.view import messages as msg
from archer.view.model import ResponseTable
from archer.view.widgets.linetable import LineTable
from archer.view.widgets.tables import GroupTable


class GroupTab(TabPane):
    """Owns the loaded group (step, uid, previews); re-showing it only moves the cursor."""

    def __init__(self, title: str, **kw) -> None:
        super().__init__(title, **kw)
        self.loaded: msg.GroupLoaded | None = None

    def compose(self):
        yield Static(id="group-head")
        yield GroupTable(id="group-table")

    def has(self, step: int, uid: str) -> bool:
        return self.loaded is not None and (self.loaded.step, self.loaded.uid) == (step, uid)

    def forget(self) -> None:
        """The loaded group is out of date (a new step, a new tokenizer)."""
        self.loaded = None

    def show_loading(self, uid: str) -> None:
        self.query_one("#group-head", Static).update(Text(f"loading group {uid} …", style="dim"))

    def show_group(self, table: ResponseTable, m: msg.GroupLoaded, current: int | None) -> None:
        self.loaded = m
        acc = table.cols["accepted"][m.rows] if m.rows else np.zeros(0)
        head = Text()
        head.append("group ", style="bold")
        head.append(m.uid, style="bold cyan")
        head.append(
            f"  step {m.step} · {len(m.rows)} responses · {int((acc == 1).sum())} accepted, "
            f"{int((acc == 0).sum())} rejected, {int(np.isnan(acc).sum())} not filtered\n"
        )
        head.append("prompt ", style="bold")
        head.append(m.prompt or "(empty)")
        self.query_one("#group-head", Static).update(head)
        self.query_one("#group-table", GroupTable).show(table, m.rows, m.previews, current)

    def select_row(self, table: ResponseTable, current: int | None) -> None:
        """The group is already shown: only move the cursor to `current`."""
        if self.loaded is not None:
            g = self.loaded
            self.query_one("#group-table", GroupTable).show(table, g.rows, g.previews, current)

    @on(LineTable.Selected, "#group-table")
    def _selected(self, event: LineTable.Selected) -> None:
        event.stop()
        if self.loaded is not None:
            self.post_message(msg.JumpTo(self.loaded.step, int(event.key), None))
