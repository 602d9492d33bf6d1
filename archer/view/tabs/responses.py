"""Tab 1: the step list and the current step's responses, with their sort and filters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.text import Text
from textual import on
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, Static, TabPane

from archer.view import messages as msg
from archer.view.guard import guarded
from archer.view.model import ACCEPT_FILTERS, ResponseTable, StepRow
from archer.view.widgets.filters import ResponseFilterBar
from archer.view.widgets.linetable import LineTable
from archer.view.widgets.tables import ResponsesTable, SortableTable, StepsTable

#: below this many columns the step list starts hidden (the responses need the room)
NARROW = 100


class ResponsesTab(TabPane):
    """Owns the response order (sort + filters) and whether the step list shows; posts
    StepChosen / ResponseChosen on moves."""

    def __init__(self, title: str, **kw) -> None:
        super().__init__(title, **kw)
        self.steps_shown: bool | None = None  # None: by the terminal's width; else the user's toggle
        self.sort: tuple[str, bool] = ("row", False)
        self.filter = ResponseFilterBar.Changed("all", None, None)
        self.table: ResponseTable | None = None
        self.order: np.ndarray = np.zeros(0, dtype=np.int64)
        self.row: int | None = None  # the selected response (may be filtered out of the table)

    def compose(self):
        with Horizontal():
            with Vertical(id="steps-box"):
                yield Label("steps", classes="box-title")
                yield StepsTable(id="steps")
            with Vertical(id="responses-box"):
                yield ResponseFilterBar(id="response-filter")
                yield Static(id="responses-message")
                yield ResponsesTable(id="responses-table")

    @property
    def responses(self) -> ResponsesTable:
        return self.query_one("#responses-table", ResponsesTable)

    @property
    def steps(self) -> StepsTable:
        return self.query_one("#steps", StepsTable)

    # ---- from the app -------------------------------------------------------------------------

    def set_steps(self, steps: Sequence[StepRow], current: int | None) -> None:
        self.steps.fill(steps, current)

    def select_step(self, step: int) -> None:
        """A new step is on its way: point the step list at it and show the table loading."""
        self.table, self.row = None, None
        self.steps.select_step(step)
        self.responses.loading = True

    def show_table(self, table: ResponseTable, keep_row: int | None) -> None:
        """The step's responses arrived: list them in the current sort and filters."""
        self.table = table
        self.responses.loading = False
        if table.n == 0:
            self.order = np.zeros(0, dtype=np.int64)
            self.responses.show(table, self.order, None)
            self.message(f"step {table.step} has no responses (0 rows)", "yellow")
            return
        self.apply(keep_row)

    def show_failed(self, step: int, message: str) -> None:
        self.responses.loading = False
        self.responses.clear()
        self.message(f"cannot read step {step}: {message}", "red")

    def message(self, text: str, style: str = "dim") -> None:
        w = self.query_one("#responses-message", Static)
        w.update(Text(text, style=style))
        w.display = bool(text)

    def select_row(self, row: int) -> None:
        """Put the table's cursor on `row` (if the filters show it)."""
        self.row = row
        try:
            self.responses.move_cursor(row=self.responses.get_row_index(str(row)))
        except KeyError:  # filtered out of the table: still shown in the tokens tab
            pass

    def neighbour(self, row: int | None, delta: int) -> int | None:
        """The response `delta` places from `row` in the table's order (clamped), or None."""
        if self.table is None or not len(self.order):
            return None
        where = np.flatnonzero(self.order == row)
        i = int(where[0]) if len(where) else -1
        return int(self.order[min(max(0, i + delta), len(self.order) - 1)])

    def first_row(self) -> int | None:
        return int(self.order[0]) if len(self.order) else None

    def cycle_accepted(self) -> None:
        cur = self.filter.accepted
        nxt = ACCEPT_FILTERS[(ACCEPT_FILTERS.index(cur) + 1) % len(ACCEPT_FILTERS)]
        self.query_one("#response-filter", ResponseFilterBar).set_accepted(nxt)

    def focus_filters(self) -> None:
        self.query_one("#reward-min", Input).focus()

    # ---- the step list ------------------------------------------------------------------------

    def fit(self, width: int) -> None:
        """Show or hide the step list for a terminal `width` columns wide (unless toggled)."""
        show = self.steps_shown if self.steps_shown is not None else width >= NARROW
        box = self.query_one("#steps-box")
        box.set_class(not show, "-hidden")
        if not show and self.steps.has_focus:
            self.responses.focus()

    def toggle_steps(self) -> bool:
        """Flip the step list (from now on regardless of the width); returns whether it shows."""
        self.steps_shown = self.query_one("#steps-box").has_class("-hidden")
        self.fit(self.app.size.width)
        return self.steps_shown

    # ---- order --------------------------------------------------------------------------------

    def apply(self, keep_row: int | None = None) -> None:
        """Re-sort and re-filter the table, keeping the cursor on `keep_row` (else the selection)."""
        t = self.table
        if t is None:
            return
        f = self.filter
        key, desc = self.sort
        self.order = t.order(key, desc, f.accepted, f.reward_min, f.reward_max)
        self.responses.set_sort(key, desc)
        self.responses.show(t, self.order, keep_row if keep_row is not None else self.row)
        self.query_one("#response-count", Label).update(f"{len(self.order)} of {t.n} responses")
        if len(self.order) == 0:
            self.message("no response passes the filters", "yellow")
        else:
            self.message("")

    # ---- handlers -----------------------------------------------------------------------------

    @on(LineTable.Highlighted, "#steps")
    def _step_highlighted(self, event: LineTable.Highlighted) -> None:
        event.stop()
        if event.index == event.table.cursor_row:  # else a stale event: the cursor has moved on
            self.post_message(msg.StepChosen(int(event.key)))

    @on(LineTable.Selected, "#steps")
    def _step_selected(self, event: LineTable.Selected) -> None:
        event.stop()
        self.responses.focus()

    @on(LineTable.Highlighted, "#responses-table")
    def _response_highlighted(self, event: LineTable.Highlighted) -> None:
        event.stop()
        if event.index == event.table.cursor_row:
            self.post_message(msg.ResponseChosen(int(event.key)))

    @on(LineTable.Selected, "#responses-table")
    def _response_selected(self, event: LineTable.Selected) -> None:
        event.stop()
        self.post_message(msg.ResponseChosen(int(event.key), open=True))

    @on(SortableTable.SortChanged, "#responses-table")
    @guarded
    def _sort_changed(self, event: SortableTable.SortChanged) -> None:
        event.stop()
        self.sort = (event.key, event.descending)
        self.apply()

    @on(ResponseFilterBar.Changed)
    @guarded
    def _filter_changed(self, event: ResponseFilterBar.Changed) -> None:
        event.stop()
        self.filter = event
        self.apply()
