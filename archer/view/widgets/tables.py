"""The viewer's tables: steps, responses, tokens, top-K and group members.

Sorting and filtering happen in the data layer (numpy); a table only shows the rows it is
given and asks for a new order (`SortableTable.SortChanged`) on a header click or `s`/`S`.
Cells that come from the trace (uids, token text) are `Text`, never markup strings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.message import Message

from archer.view.cells import EMPTY_CELL, quote, visible
from archer.view.colors import fmt
from archer.view.model import RESPONSE_COLUMNS, PromptStep, ResponseTable, StepRow, TokenHit
from archer.view.widgets.linetable import LineTable

YES = Text("✓", style="green")
NO = Text("✗", style="red")
UNKNOWN = Text("–", style="dim")


def mark(v: float | bool | None) -> Text:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return UNKNOWN
    return YES if v else NO


def num(v: float, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


class ArcherTable(LineTable):
    """A table of the viewer (a LineTable: only the rows on screen are drawn)."""


class SortableTable(ArcherTable):
    """A table whose columns sort through the app (header click, `s`, `S`)."""

    BINDINGS = [
        Binding("s", "sort_next", "sort col"),
        Binding("S", "sort_reverse", "reverse"),
    ]

    @dataclass
    class SortChanged(Message):
        table: SortableTable
        key: str
        descending: bool

        @property
        def control(self) -> SortableTable:
            return self.table

    def __init__(
        self, columns: Sequence[tuple[str, str]], sort_key: str, descending: bool = False, **kw
    ) -> None:
        super().__init__(**kw)
        self.spec = list(columns)
        self.sort_key = sort_key
        self.descending = descending

    def on_mount(self) -> None:
        self.fill([])

    def _labels(self) -> list[tuple[str, object]]:
        return [
            (key, Text(label + ((" ▼" if self.descending else " ▲") if key == self.sort_key else "")))
            for key, label in self.spec
        ]

    def set_sort(self, key: str, descending: bool) -> None:
        self.sort_key, self.descending = key, descending

    def fill(self, rows: Iterable[tuple[str, Sequence[object]]], keep_row: str | None = None) -> None:
        """Replace the rows (key, cells); put the cursor back on `keep_row` if it is still shown."""
        self.replace(self._labels(), list(rows), keep_row)

    def _request(self, key: str, descending: bool) -> None:
        self.set_sort(key, descending)
        self.post_message(self.SortChanged(self, key, descending))

    def action_sort_next(self) -> None:
        keys = [k for k, _ in self.spec]
        i = keys.index(self.sort_key) if self.sort_key in keys else -1
        self._request(keys[(i + 1) % len(keys)], self.descending)

    def action_sort_reverse(self) -> None:
        self._request(self.sort_key, not self.descending)

    @on(LineTable.HeaderClicked)
    def _header_clicked(self, event: LineTable.HeaderClicked) -> None:
        event.stop()
        self.header_clicked(event.column)

    def header_clicked(self, key: str) -> None:
        self._request(key, not self.descending if key == self.sort_key else False)


class StepsTable(ArcherTable):
    """Every step of the manifest with its aggregates (no step file is opened): responses, mean
    reward, accuracy, mean entropy, rows with influence. The cursor is the current step."""

    COLUMNS = ("step", "resp", "reward", "acc", "H mean", "I rows")

    def fill(self, steps: Sequence[StepRow], current: int | None) -> None:
        rows = [
            (
                str(s.step),
                [
                    str(s.step),
                    str(s.n_responses),
                    num(s.reward_mean),
                    num(s.accuracy),
                    num(s.entropy_mean),
                    str(s.influence_rows),
                ],
            )
            for s in steps
        ]
        self.replace([(c, c) for c in self.COLUMNS], rows, None if current is None else str(current))

    def select_step(self, step: int | None) -> None:
        if step is not None and str(step) in self._index:
            self.move_cursor(row=self.get_row_index(str(step)))


def response_cells(t: ResponseTable, r: int) -> list[object]:
    c = t.cols
    return [
        str(int(c["row"][r])),
        Text(str(t.uid[r]), no_wrap=True, overflow="ellipsis"),
        str(int(c["sample_index"][r])),
        num(c["reward"][r]),
        mark(c["correct"][r]),
        mark(c["accepted"][r]),
        str(int(c["response_length"][r])),
        num(c["entropy_mean"][r]),
        num(c["entropy_max"][r]),
        num(c["influence_sum"][r]),
        num(c["influence_mean"][r]),
    ]


class ResponsesTable(SortableTable):
    """The responses of the current step (filtered and sorted by the app)."""

    def __init__(self, **kw) -> None:
        super().__init__(RESPONSE_COLUMNS, "row", **kw)

    def show(self, t: ResponseTable, order: np.ndarray, keep_row: int | None) -> None:
        self.fill(
            ((str(int(r)), response_cells(t, int(r))) for r in order),
            None if keep_row is None else str(keep_row),
        )


TOKEN_COLUMNS = (
    ("position", "pos"),
    ("id", "id"),
    ("text", "text"),
    ("entropy", "entropy"),
    ("influence", "influence"),
)


class TokenTable(SortableTable):
    """The tokens of the selected response passing the filters, sortable by position/entropy/influence."""

    def __init__(self, **kw) -> None:
        super().__init__(TOKEN_COLUMNS, "position", **kw)

    def action_sort_next(self) -> None:
        keys = ["position", "entropy", "influence"]
        i = keys.index(self.sort_key) if self.sort_key in keys else -1
        self._request(keys[(i + 1) % len(keys)], self.descending)

    def header_clicked(self, key: str) -> None:
        if key in ("id", "text"):
            key = "position"
        self._request(key, not self.descending if key == self.sort_key else key != "position")

    def show(
        self, tokens, texts: Sequence[str], positions: np.ndarray, ids_mode: bool, keep_pos: int | None
    ) -> None:
        inf = tokens.influence

        def cells(p: int) -> list[object]:
            iv = "n/a" if inf is None else ("NaN" if math.isnan(float(inf[p])) else fmt(float(inf[p])))
            return [
                str(p),
                str(int(tokens.ids[p])),
                Text("" if ids_mode else quote(texts[p]), no_wrap=True),
                fmt(float(tokens.entropy[p])),
                iv,
            ]

        keep = None if keep_pos is None else str(keep_pos)
        self.fill(((str(int(p)), cells(int(p))) for p in positions), keep)


class TopKTable(ArcherTable):
    """The step's highest and lowest entropy and influence tokens, each with a window of the text
    around it; Enter jumps to one."""

    COLUMNS = ("kind", "rank", "value", "row", "pos", "id", "text", "in context")
    #: characters of text shown on each side of a hit
    WINDOW = 24

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.hits: dict[str, TokenHit] = {}

    def on_mount(self) -> None:
        self.show({}, {})

    def show(
        self, groups: dict[str, list[TokenHit]], texts: dict[tuple[int, int], tuple[str, str, str]]
    ) -> None:
        self.hits = {}
        rows = []
        for kind, hits in groups.items():
            for h in hits:
                key = f"{kind}:{h.rank}"
                self.hits[key] = h
                before, text, after = texts.get((h.row, h.pos), ("", None, ""))
                rows.append(
                    (
                        key,
                        [
                            kind,
                            str(h.rank),
                            fmt(h.value),
                            str(h.row),
                            str(h.pos),
                            str(h.token_id),
                            Text("" if text is None else quote(text), no_wrap=True),
                            self.window(before, text, after),
                        ],
                    )
                )
        self.replace([(c, c) for c in self.COLUMNS], rows)

    def window(self, before: str, text: str | None, after: str) -> Text:
        """`…before⟨token⟩after…` on one line, whitespace visible, the token reversed."""
        if text is None:
            return Text("")
        w = self.WINDOW
        t = Text(no_wrap=True)
        left, right = visible(before), visible(after)
        t.append(("…" + left[-w:]) if len(left) > w else left, style="dim")
        t.append(visible(text) or EMPTY_CELL, style="reverse bold")
        t.append((right[:w] + "…") if len(right) > w else right, style="dim")
        return t


class PromptStepsTable(ArcherTable):
    """One prompt across the steps that sampled it; Enter opens its responses at that step."""

    COLUMNS = ("step", "resp", "reward", "acc", "accepted", "rejected", "I mean")

    def on_mount(self) -> None:
        self.show([])

    def show(self, history: Sequence[PromptStep]) -> None:
        self.history = {str(h.step): h for h in history}
        rows = [
            (
                str(h.step),
                [
                    str(h.step),
                    str(len(h.rows)),
                    num(h.reward_mean),
                    num(h.accuracy),
                    str(h.accepted),
                    str(h.rejected),
                    num(h.influence_mean),
                ],
            )
            for h in history
        ]
        self.replace([(c, c) for c in self.COLUMNS], rows)


class GroupTable(ArcherTable):
    """All responses of one prompt; accepted ones marked."""

    COLUMNS = (
        ("mark", ""),
        ("row", "row"),
        ("sample", "sample"),
        ("reward", "reward"),
        ("correct", "correct"),
        ("adv", "adv"),
        ("length", "length"),
        ("hmean", "H mean"),
        ("isum", "I sum"),
        ("response", "response"),
    )
    MAX_WIDTH = 80

    def on_mount(self) -> None:
        self.replace(self.COLUMNS, [])

    def show(
        self, t: ResponseTable, rows: Sequence[int], previews: dict[int, str], current: int | None
    ) -> None:
        c = t.cols
        out = []
        for r in rows:
            acc = c["accepted"][r]
            tag = (
                Text("✓ accepted", style="bold green")
                if acc == 1.0
                else Text("✗ rejected", style="red")
                if acc == 0.0
                else Text("· unfiltered", style="dim")
            )
            out.append(
                (
                    str(r),
                    [
                        tag,
                        str(r),
                        str(int(c["sample_index"][r])),
                        num(c["reward"][r]),
                        mark(c["correct"][r]),
                        num(c["advantage"][r]),
                        str(int(c["response_length"][r])),
                        num(c["entropy_mean"][r]),
                        num(c["influence_sum"][r]),
                        Text(previews.get(r, ""), no_wrap=True, overflow="ellipsis"),
                    ],
                )
            )
        self.replace(self.COLUMNS, out, None if current is None else str(current))
