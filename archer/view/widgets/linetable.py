"""A Line-API table: a header plus rows drawn only when they are on screen.

Textual's DataTable measures every cell of every row when rows change (a thousand responses x
eleven columns took about a second on 2 cores), so the viewer's tables are drawn like the
heatmaps: column widths are computed once from the cells, each visible line is rendered to a
`Strip` on demand and cached. Cells are `Text` (or plain strings, never parsed as markup).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

PAD = 1  # blank cells on each side of a column


def cell_width(cell: object) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))


class LineTable(ScrollView, can_focus=True):
    """Rows of cells under a fixed header, one cursor row; posts Highlighted/Selected/HeaderClicked."""

    DEFAULT_CSS = """
    LineTable {
        height: 1fr;
        overflow-x: auto;
        overflow-y: auto;
        background: $surface;
        & > .linetable--header { text-style: bold; background: $panel; color: $foreground; }
        & > .linetable--even { background: $surface-lighten-1 50%; }
        & > .linetable--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
        }
        &:focus > .linetable--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: bold;
        }
    }
    """
    COMPONENT_CLASSES = {"linetable--header", "linetable--cursor", "linetable--even"}
    BINDINGS = [
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "edge(0)", "first", show=False),
        Binding("end", "edge(1)", "last", show=False),
        Binding("enter", "select", "open", show=False),
    ]
    MAX_WIDTH = 48

    @dataclass
    class Highlighted(Message):
        table: LineTable
        key: str
        index: int

        @property
        def control(self) -> LineTable:
            return self.table

    @dataclass
    class Selected(Message):
        table: LineTable
        key: str
        index: int

        @property
        def control(self) -> LineTable:
            return self.table

    @dataclass
    class HeaderClicked(Message):
        table: LineTable
        column: str

        @property
        def control(self) -> LineTable:
            return self.table

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.columns: list[tuple[str, object]] = []
        self.widths: list[int] = []
        self.keys: list[str] = []
        self.rows: list[Sequence[object]] = []
        self._index: dict[str, int] = {}
        self.cursor_row = 0
        self._version = 0
        self._cache: LRUCache[tuple, Strip] = LRUCache(512)

    # ---- content ------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.keys)

    def replace(
        self,
        columns: Sequence[tuple[str, object]],
        rows: Sequence[tuple[str, Sequence[object]]],
        cursor_key: str | None = None,
    ) -> None:
        """Show `rows` (key, cells) under `columns` (key, label); cursor on `cursor_key` if shown."""
        widths = [cell_width(label) for _, label in columns]
        for _, cells in rows:
            for i, c in enumerate(cells):
                w = cell_width(c)
                if w > widths[i]:
                    widths[i] = w
        self.columns = list(columns)
        self.widths = [min(w, self.MAX_WIDTH) for w in widths]
        self.keys = [k for k, _ in rows]
        self.rows = [cells for _, cells in rows]
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._version += 1
        self._cache.clear()
        total = sum(w + 2 * PAD for w in self.widths)
        self.virtual_size = Size(total, len(self.keys) + 1)
        target = self._index.get(cursor_key, 0) if cursor_key is not None else 0
        self.cursor_row = -1
        self.move_cursor(row=target)
        self.refresh()

    def clear(self) -> None:
        self.replace(self.columns, [])

    def get_row_index(self, key: str) -> int:
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"no row {key!r}") from None

    def row_key(self, index: int) -> str:
        return self.keys[index]

    def selected_key(self) -> str | None:
        return self.keys[self.cursor_row] if 0 <= self.cursor_row < len(self.keys) else None

    # ---- cursor -------------------------------------------------------------------------------

    def move_cursor(self, row: int, animate: bool = False) -> None:  # noqa: ARG002 - DataTable's signature
        if not self.keys:
            self.cursor_row = 0
            return
        row = min(max(0, int(row)), len(self.keys) - 1)
        if row == self.cursor_row:
            return
        self.cursor_row = row
        self._scroll_to_cursor()
        # rows just replaced change the virtual size only at the next layout, which may clamp the
        # scroll above; look again once it is done, so the cursor row is always on screen
        self.call_after_refresh(self._scroll_to_cursor)
        self.refresh()
        self.post_message(self.Highlighted(self, self.keys[row], row))

    def on_resize(self) -> None:
        self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        visible = max(1, self.scrollable_content_region.height - 1)  # minus the header
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False, immediate=True)

    def action_move(self, delta: int) -> None:
        self.move_cursor(self.cursor_row + delta)

    def action_page(self, delta: int) -> None:
        self.move_cursor(self.cursor_row + delta * max(1, self.scrollable_content_region.height - 2))

    def action_edge(self, end: int) -> None:
        self.move_cursor(len(self.keys) - 1 if end else 0)

    def action_select(self) -> None:
        if self.keys:
            self.post_message(self.Selected(self, self.keys[self.cursor_row], self.cursor_row))

    # ---- rendering ----------------------------------------------------------------------------

    def _line(self, cells: Sequence[object], style: Style) -> Strip:
        segs: list[Segment] = []
        for cell, w in zip(cells, self.widths):
            t = cell.copy() if isinstance(cell, Text) else Text(str(cell))
            t.truncate(w, overflow="ellipsis", pad=True)
            segs.append(Segment(" " * PAD, style))
            segs.extend(
                Segment(s.text, style + s.style if s.style else style)
                for s in t.render(self.app.console, end="")
                if s.text
            )
            segs.append(Segment(" " * PAD, style))
        return Strip(segs)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self.rich_style
        if y == 0:
            key = ("header", self._version)
            strip = self._cache.get(key)
            if strip is None:
                strip = self._line(
                    [label for _, label in self.columns],
                    base + self.get_component_rich_style("linetable--header"),
                )
                self._cache[key] = strip
            return strip.crop_extend(scroll_x, scroll_x + width, base)
        i = scroll_y + y - 1
        if i >= len(self.keys):
            return Strip.blank(width, base)
        is_cursor = i == self.cursor_row
        style = base
        if is_cursor:
            style = base + self.get_component_rich_style("linetable--cursor")
        elif i % 2:
            style = base + self.get_component_rich_style("linetable--even")
        key = (i, self._version, is_cursor, self.has_focus if is_cursor else None)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._line(self.rows[i], style)
            self._cache[key] = strip
        return strip.crop_extend(scroll_x, scroll_x + width, style)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def on_click(self, event) -> None:
        off = event.get_content_offset(self)
        if off is None:
            return
        if off.y == 0:
            x = int(self.scroll_x) + off.x
            edge = 0
            for (key, _), w in zip(self.columns, self.widths):
                edge += w + 2 * PAD
                if x < edge:
                    self.post_message(self.HeaderClicked(self, key))
                    return
            return
        i = int(self.scroll_y) + off.y - 1
        if 0 <= i < len(self.keys):
            if i == self.cursor_row:
                self.action_select()
            else:
                self.move_cursor(i)
