"""The token heatmaps: two Line-API panes (entropy, influence) over one shared layout and cursor.

Modelled on toolong's log view: `render_line` returns a cached `Strip` cropped to the viewport,
so scrolling or moving the cursor rebuilds at most the lines that changed. The layout is
computed once per (response, width); styles come from prebuilt tables (`colors.style_lut`).
Token text only ever reaches the screen as `Segment`s, never as markup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.cache import LRUCache
from textual.containers import Horizontal, Vertical
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Label, Static

from archer.core.trace.schema import ROLE_TOOL_CALL, ROLE_TOOL_RESULT
from archer.view.cells import cell_text, ends_line, quote
from archer.view.colors import (
    CURSOR_STYLE,
    DIM_STYLE,
    MATCH_STYLE,
    NAN_STYLE,
    Scale,
    diverging_scale,
    fmt,
    legend,
    sequential_scale,
    style_lut,
)
from archer.view.layout import TokenLayout, layout_tokens
from archer.view.messages import CursorMoved

METRICS = ("entropy", "influence")
_MESSAGE_STYLE = Style(dim=True, italic=True)


class HeatmapModel:
    """What both panes draw: cell texts, per-metric styles, filter/search marks and the cursor.

    Any change other than the cursor bumps `version`, which retires every cached strip.
    """

    def __init__(self) -> None:
        self.key: object = None
        self.raw: list[str] = []
        self.cells: list[str] = []
        self.widths: list[int] = []
        self.breaks: list[bool] = []
        self.gap = 0
        self.values: dict[str, np.ndarray | None] = {"entropy": None, "influence": None}
        self.styles: dict[str, list[Style]] = {"entropy": [], "influence": []}
        self.scales: dict[str, Scale] = {
            "entropy": sequential_scale(math.nan, math.nan, "response"),
            "influence": diverging_scale(math.nan, "response"),
        }
        self.keep: list[bool] | None = None
        self.match: list[bool] | None = None
        self.tool: list[bool] | None = None  # tool-result tokens (agent traces): drawn dimmed
        self.cursor = 0
        self.version = 0
        self.message = "no response selected"
        self._layouts: dict[int, TokenLayout] = {}

    @property
    def n(self) -> int:
        return len(self.cells)

    def set_tokens(
        self,
        key: object,
        raw: Sequence[str],
        entropy: np.ndarray,
        influence: np.ndarray | None,
        ids_mode: bool,
    ) -> None:
        self.key = key
        self.raw = list(raw)
        self.cells = [cell_text(t) for t in self.raw] if not ids_mode else list(self.raw)
        self.widths = [max(1, cell_len(c)) for c in self.cells]
        self.breaks = [ends_line(t) for t in self.raw] if not ids_mode else [False] * len(self.raw)
        self.gap = 1 if ids_mode else 0
        self.values = {"entropy": entropy, "influence": influence}
        self.keep = self.match = self.tool = None
        self.cursor = 0
        self.message = "(empty response: 0 tokens)" if not self.cells else ""
        self._layouts.clear()
        self._restyle()

    def clear(self, message: str) -> None:
        self.set_tokens(None, [], np.zeros(0, np.float32), None, False)
        self.message = message

    def set_scales(self, scales: dict[str, Scale]) -> None:
        self.scales = dict(scales)
        self._restyle()

    def set_keep(self, keep: np.ndarray | None) -> None:
        self.keep = None if keep is None or keep.all() else keep.tolist()
        self.version += 1

    def set_match(self, match: np.ndarray | None) -> None:
        self.match = None if match is None or not match.any() else match.tolist()
        self.version += 1

    def _restyle(self) -> None:
        for metric in METRICS:
            vals = self.values[metric]
            if vals is None:
                self.styles[metric] = [NAN_STYLE] * self.n
                continue
            lut = style_lut(self.scales[metric].cmap)
            q = self.scales[metric].quantize(vals).tolist()
            nan = np.isnan(vals).tolist()
            self.styles[metric] = [NAN_STYLE if isnan else lut[k] for k, isnan in zip(q, nan)]
        self.version += 1

    def layout(self, width: int) -> TokenLayout:
        lay = self._layouts.get(width)
        if lay is None:
            if len(self._layouts) > 4:
                self._layouts.clear()
            lay = layout_tokens(self.widths, self.breaks, width, self.gap)
            self._layouts[width] = lay
        return lay

    def line_strip(self, layout: TokenLayout, metric: str, line: int) -> Strip:
        """One line of one pane as a Strip (segments only: token text is never markup)."""
        styles = self.styles[metric]
        keep, match, cursor, cells, tool = self.keep, self.match, self.cursor, self.cells, self.tool
        gap = Segment(" " * self.gap) if self.gap else None
        segs: list[Segment] = []
        for i in layout.tokens_on(line):
            style = styles[i] if (keep is None or keep[i]) and (tool is None or not tool[i]) else DIM_STYLE
            if match is not None and match[i]:
                style = style + MATCH_STYLE
            if i == cursor:
                style = style + CURSOR_STYLE
            segs.append(Segment(cells[i], style))
            if gap is not None:
                segs.append(gap)
        return Strip(segs)


def render_screen(model: HeatmapModel, metric: str, width: int, height: int, top: int = 0) -> list[Strip]:
    """Layout plus the strips of one screenful (what the bench times; the pane caches these)."""
    lay = model.layout(width)
    return [model.line_strip(lay, metric, y) for y in range(top, min(lay.n_lines, top + height))]


class HeatmapPane(ScrollView, can_focus=False):
    """One metric's heatmap; scrolls in step with its partner pane."""

    DEFAULT_CSS = """
    HeatmapPane { overflow-x: hidden; overflow-y: scroll; scrollbar-size-vertical: 1; }
    """

    def __init__(self, model: HeatmapModel, metric: str, on_click: Callable[[int], None], **kw) -> None:
        super().__init__(**kw)
        self.model = model
        self.metric = metric
        self.partner: HeatmapPane | None = None
        self._on_token_click = on_click
        self._layout: TokenLayout | None = None
        self._cache: LRUCache[tuple, Strip] = LRUCache(1024)

    def relayout(self, width: int) -> None:
        self._layout = self.model.layout(width)
        self._cache.clear()
        self.virtual_size = Size(width, max(1, self._layout.n_lines))
        self.refresh()

    @property
    def layout_width(self) -> int:
        return max(8, self.scrollable_content_region.width)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        line = scroll_y + y
        lay = self._layout
        if lay is None or lay.n_lines == 0:
            if line == 0 and self.model.message:
                return Strip([Segment(self.model.message, _MESSAGE_STYLE)]).crop_extend(
                    0, width, self.rich_style
                )
            return Strip.blank(width, self.rich_style)
        if line >= lay.n_lines:
            return Strip.blank(width, self.rich_style)
        m = self.model
        cur_line = int(lay.line_of[m.cursor]) if 0 <= m.cursor < m.n else -1
        key = (line, m.version, m.cursor if line == cur_line else -1)
        strip = self._cache.get(key)
        if strip is None:
            strip = m.line_strip(lay, self.metric, line)
            self._cache[key] = strip
        return strip.crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if self.partner is not None and self.partner.scroll_y != new:
            self.partner.scroll_y = new

    def on_click(self, event) -> None:
        off = event.get_content_offset(self)
        if off is None or self._layout is None:
            return
        i = self._layout.token_at(int(self.scroll_y) + off.y, int(self.scroll_x) + off.x)
        if i is not None:
            self._on_token_click(i)

    def on_resize(self, event) -> None:
        parent = self.parent
        while parent is not None and not isinstance(parent, TokenView):
            parent = parent.parent
        if parent is not None:
            parent.relayout()


class TokenView(Widget, can_focus=True):
    """Entropy and influence heatmaps side by side, their legends and the cursor readout."""

    BINDINGS = [
        Binding("left,h", "cursor(-1)", "prev token", show=False),
        Binding("right,l", "cursor(1)", "next token", show=False),
        Binding("up,k", "line(-1)", "line up", show=False),
        Binding("down,j", "line(1)", "line down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "edge(0)", "first token", show=False),
        Binding("end", "edge(1)", "last token", show=False),
    ]

    cursor: reactive[int] = reactive(0, init=False)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.model = HeatmapModel()
        self.tokens = None
        self.match_ranges: list[tuple[int, int]] = []
        self._width = 0

    def compose(self):
        with Horizontal(id="panes"):
            with Vertical(classes="pane-box"):
                yield Label("entropy", classes="pane-title")
                yield HeatmapPane(self.model, "entropy", self.move_to, id="entropy-pane")
                yield Static(id="entropy-legend", classes="legend")
            with Vertical(classes="pane-box"):
                yield Label("influence", classes="pane-title")
                yield HeatmapPane(self.model, "influence", self.move_to, id="influence-pane")
                yield Static(id="influence-legend", classes="legend")
        yield Static(id="readout")

    def on_mount(self) -> None:
        a, b = self.panes
        a.partner, b.partner = b, a
        self._update_legends()
        self._update_readout()

    @property
    def panes(self) -> tuple[HeatmapPane, HeatmapPane]:
        return self.query_one("#entropy-pane", HeatmapPane), self.query_one("#influence-pane", HeatmapPane)

    # ---- content ------------------------------------------------------------------------------

    def show(self, tokens, texts: Sequence[str], ids_mode: bool, pos: int = 0) -> None:
        """Show a response (`ResponseTokens`) with its per-token texts; cursor on `pos`."""
        self.tokens = tokens
        key = (tokens.step, tokens.row, ids_mode)
        self.model.set_tokens(key, texts, tokens.entropy, tokens.influence, ids_mode)
        roles = getattr(tokens, "roles", None)
        self.model.tool = (
            None if roles is None or len(roles) != self.model.n else (roles == ROLE_TOOL_RESULT).tolist()
        )
        self.match_ranges = []
        self._width = 0
        self.relayout()
        for p in self.panes:
            p.scroll_to(y=0, animate=False, immediate=True)
        self.move_to(min(max(0, pos), max(0, self.model.n - 1)), force=True)
        self._update_legends()

    def clear(self, message: str) -> None:
        self.tokens = None
        self.model.clear(message)
        self._width = 0
        self.relayout()
        self._update_readout()

    def set_scales(self, entropy: Scale, influence: Scale) -> None:
        self.model.set_scales({"entropy": entropy, "influence": influence})
        self._update_legends()
        self.refresh_panes()

    def set_keep(self, keep: np.ndarray | None) -> None:
        self.model.set_keep(keep)
        self.refresh_panes()

    def set_matches(self, ranges: list[tuple[int, int]]) -> None:
        self.match_ranges = ranges
        mask = np.zeros(self.model.n, dtype=bool)
        for a, b in ranges:
            mask[a : b + 1] = True
        self.model.set_match(mask if ranges else None)
        self.refresh_panes()
        self._update_readout()

    def relayout(self) -> None:
        if not self.is_mounted:
            return
        a, b = self.panes
        width = min(a.layout_width, b.layout_width)  # one width for both: tokens line up
        if width != self._width or a._layout is None or a._layout is not self.model.layout(width):
            self._width = width
            a.relayout(width)
            b.relayout(width)

    def refresh_panes(self) -> None:
        for p in self.panes:
            p.refresh()

    # ---- cursor -------------------------------------------------------------------------------

    def move_to(self, i: int, force: bool = False) -> None:
        n = self.model.n
        if n == 0:
            self._update_readout()
            return
        i = min(max(0, int(i)), n - 1)
        if i == self.model.cursor and not force:
            return
        self.model.cursor = i
        self.cursor = i
        self._ensure_visible(i)
        self.refresh_panes()
        self._update_readout()
        self.post_message(CursorMoved(i))

    def _ensure_visible(self, i: int) -> None:
        a, _ = self.panes
        lay = a._layout
        if lay is None or lay.n_lines == 0:
            return
        line = int(lay.line_of[i])
        h = max(1, a.scrollable_content_region.height)
        top = int(a.scroll_y)
        if line < top or line >= top + h:
            a.scroll_to(y=max(0, line - h // 3), animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        self.move_to(self.model.cursor + delta)

    def action_line(self, delta: int) -> None:
        a, _ = self.panes
        lay = a._layout
        if lay is None or self.model.n == 0:
            return
        cur = self.model.cursor
        line = int(lay.line_of[cur]) + delta
        if not 0 <= line < lay.n_lines:
            return
        i = lay.token_at(line, int(lay.x[cur]))
        if i is not None:
            self.move_to(i)

    def action_page(self, delta: int) -> None:
        a, _ = self.panes
        h = max(1, a.scrollable_content_region.height - 1)
        lay = a._layout
        if lay is None or self.model.n == 0:
            return
        cur = self.model.cursor
        line = min(max(0, int(lay.line_of[cur]) + delta * h), lay.n_lines - 1)
        i = lay.token_at(line, int(lay.x[cur]))
        if i is not None:
            self.move_to(i)

    def action_edge(self, end: int) -> None:
        self.move_to(self.model.n - 1 if end else 0)

    # ---- legends and readout ------------------------------------------------------------------

    def _update_legends(self) -> None:
        if not self.is_mounted:
            return
        s = self.model.scales
        ent = self.query_one("#entropy-legend", Static)
        ent.update(legend(s["entropy"], "H", fit=self._fit(ent)))
        inf_legend = self.query_one("#influence-legend", Static)
        inf = self.model.values.get("influence")
        if self.tokens is not None and inf is None:
            t = Text("influence not computed for this response", style="dim italic")
        else:
            t = legend(s["influence"], "I", nan_note=True, fit=self._fit(inf_legend))
        inf_legend.update(t)

    @staticmethod
    def _fit(w: Static) -> int | None:
        """Cells a legend has (None before the first layout: then the full legend)."""
        return w.content_region.width or None

    def on_resize(self) -> None:
        self._update_legends()

    def readout_text(self) -> Text:
        """The cursor line: position, id, text, entropy, influence (and search position)."""
        tok = self.tokens
        if tok is None:
            return Text(self.model.message or "", style="dim")
        if tok.n == 0:
            return Text("empty response (0 tokens): nothing to show", style="dim")
        i = self.model.cursor
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"token {i + 1}/{tok.n}", style="bold")
        t.append(f"  pos {i}  id {int(tok.ids[i])}  ")
        raw = self.model.raw[i] if i < len(self.model.raw) else ""
        if self.model.gap:  # ids mode
            t.append("text: (no tokenizer)", style="dim")
        else:
            t.append("text ")
            t.append(quote(raw), style="bold")
        roles = getattr(tok, "roles", None)
        role = int(roles[i]) if roles is not None and i < len(roles) else None
        if role == ROLE_TOOL_RESULT:
            t.append(" [tool result: no loss]", style="dim")
        elif role == ROLE_TOOL_CALL:
            t.append(" [tool call]", style="dim")
        t.append(f"  entropy {fmt(float(tok.entropy[i]))}")
        if tok.influence is None:
            t.append("  influence not computed", style="dim")
        elif math.isnan(float(tok.influence[i])):
            t.append("  influence NaN (not captured)", style="dim")
        else:
            t.append(f"  influence {fmt(float(tok.influence[i]))}")
        if self.match_ranges:
            hit = next((k for k, (a, b) in enumerate(self.match_ranges) if a <= i <= b), None)
            where = (
                f"match {hit + 1}/{len(self.match_ranges)}"
                if hit is not None
                else f"{len(self.match_ranges)} matches"
            )
            t.append(f"  [{where}]", style="dim")
        return t

    def _update_readout(self) -> None:
        if self.is_mounted:
            self.query_one("#readout", Static).update(self.readout_text())
