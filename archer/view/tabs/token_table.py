"""Tab 3: the shown response's tokens as a table, sortable by position, entropy or influence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.text import Text
from textual import on
from textual.widgets import Static, TabPane

from archer.view import messages as msg
from archer.view.guard import guarded
from archer.view.model import ResponseTokens, token_order
from archer.view.widgets.linetable import LineTable
from archer.view.widgets.tables import SortableTable, TokenTable


class TokenTableTab(TabPane):
    """Owns the token sort; refills only when shown (a 3,000-row refill per keypress would lag)."""

    def __init__(self, title: str, **kw) -> None:
        super().__init__(title, **kw)
        self.sort: tuple[str, bool] = ("position", False)
        self.stale = True
        self.tokens: ResponseTokens | None = None
        self.texts: list[str] = []
        self.ids_mode = True
        self.keep: np.ndarray | None = None  # the tokens tab's entropy/influence filter
        self.cursor = 0  # the heatmap's cursor: where the table's cursor starts

    def compose(self):
        yield Static(id="token-table-note")
        yield TokenTable(id="token-table-view")

    # ---- from the app -------------------------------------------------------------------------

    def set_response(
        self,
        tokens: ResponseTokens | None,
        texts: Sequence[str],
        ids_mode: bool,
        keep: np.ndarray | None,
        cursor: int,
    ) -> None:
        self.tokens, self.texts, self.ids_mode, self.keep, self.cursor = (
            tokens,
            list(texts),
            ids_mode,
            keep,
            cursor,
        )
        self.refresh_table()

    def set_keep(self, keep: np.ndarray | None) -> None:
        self.keep = keep
        self.refresh_table()

    def positions(self) -> np.ndarray:
        """The token positions the table lists, in its order (what `e` exports)."""
        if self.tokens is None:
            return np.zeros(0, dtype=np.int64)
        key, desc = self.sort
        return token_order(self.tokens, key, desc, self.keep)

    def refresh_table(self, force: bool = False) -> None:
        """Refill the table now if this tab is showing, else when it is next shown."""
        if not force and not self.display:
            self.stale = True
            return
        self.stale = False
        table = self.query_one("#token-table-view", TokenTable)
        note = self.query_one("#token-table-note", Static)
        tok = self.tokens
        if tok is None:
            table.clear()
            note.update(Text("no response selected", style="dim"))
            return
        key, desc = self.sort
        positions = self.positions()
        table.set_sort(key, desc)
        table.show(tok, self.texts, positions, self.ids_mode, self.cursor)
        t = Text(
            f"step {tok.step} row {tok.row}: {len(positions)} of {tok.n} tokens "
            f"sorted by {key} {'descending' if desc else 'ascending'}"
        )
        if self.keep is not None and not self.keep.all():
            t.append("  (entropy/influence filters on)", style="yellow")
        note.update(t)

    # ---- handlers -----------------------------------------------------------------------------

    @on(SortableTable.SortChanged, "#token-table-view")
    @guarded
    def _sort_changed(self, event: SortableTable.SortChanged) -> None:
        event.stop()
        self.sort = (event.key, event.descending)
        self.refresh_table()

    @on(LineTable.Selected, "#token-table-view")
    def _row_selected(self, event: LineTable.Selected) -> None:
        event.stop()
        if self.tokens is not None:
            self.post_message(msg.JumpTo(self.tokens.step, self.tokens.row, int(event.key)))
