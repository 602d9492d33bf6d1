"""Tab 5: every response to the current response's prompt, accepted ones marked, and an accepted
and a rejected one side by side, coloured by influence on one shared scale."""

from __future__ import annotations

import math

import numpy as np
from rich.text import Text
from textual import on
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static, TabPane

from archer.view import messages as msg
from archer.view.cells import printable
from archer.view.colors import NAN_STYLE, diverging_scale, fmt, legend, style_lut
from archer.view.model import ResponseTable
from archer.view.widgets.linetable import LineTable
from archer.view.widgets.tables import GroupTable


class GroupTab(TabPane):
    """Owns the loaded group (step, uid, previews, token texts) and which two responses are
    compared; re-showing it only moves the cursor."""

    def __init__(self, title: str, **kw) -> None:
        super().__init__(title, **kw)
        self.loaded: msg.GroupLoaded | None = None
        self.table: ResponseTable | None = None
        self.pair: tuple[int | None, int | None] = (None, None)  # (accepted row, rejected row)

    def compose(self):
        yield Static(id="group-head")
        yield GroupTable(id="group-table")
        with Horizontal(id="compare"):
            with VerticalScroll(classes="compare-box"):
                yield Static(id="compare-a")
            with VerticalScroll(classes="compare-box"):
                yield Static(id="compare-b")
        yield Static(id="compare-legend", classes="legend")

    def has(self, step: int, uid: str) -> bool:
        return self.loaded is not None and (self.loaded.step, self.loaded.uid) == (step, uid)

    def forget(self) -> None:
        """The loaded group is out of date (a new step, a new tokenizer)."""
        self.loaded = None

    def show_loading(self, uid: str) -> None:
        self.query_one("#group-head", Static).update(Text(f"loading group {uid} …", style="dim"))

    def show_group(self, table: ResponseTable, m: msg.GroupLoaded, current: int | None) -> None:
        self.loaded = m
        self.table = table
        self.pair = default_pair(table, m.rows)
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
        if current is not None and current in m.rows:
            self.compare(current)
        else:
            self.draw_pair()

    def select_row(self, table: ResponseTable, current: int | None) -> None:
        """The group is already shown: only move the cursor to `current`."""
        if self.loaded is not None:
            g = self.loaded
            self.query_one("#group-table", GroupTable).show(table, g.rows, g.previews, current)

    # ---- side by side ----------------------------------------------------------------------

    def compare(self, row: int) -> None:
        """Put `row` on its side (accepted left, rejected right); an unfiltered row changes nothing."""
        if self.table is None:
            return
        acc = self.table.cols["accepted"][row]
        a, b = self.pair
        if acc == 1.0:
            a = row
        elif acc == 0.0:
            b = row
        self.pair = (a, b)
        self.draw_pair()

    def draw_pair(self) -> None:
        m, t = self.loaded, self.table
        if m is None or t is None or not m.tokens:
            return
        a, b = self.pair
        infl = [m.tokens[r][1] for r in (a, b) if r is not None and m.tokens[r][1] is not None]
        lim = max((float(np.nanmax(np.abs(v))) for v in infl if np.isfinite(v).any()), default=math.nan)
        scale = diverging_scale(lim, "the pair")
        for side, row, verdict in (("a", a, "accepted"), ("b", b, "rejected")):
            w = self.query_one(f"#compare-{side}", Static)
            if row is None:
                w.update(Text(f"no {verdict} response in this group", style="dim italic"))
            else:
                w.update(pair_text(t, row, verdict, m.tokens[row], scale))
        self.query_one("#compare-legend", Static).update(
            legend(scale, "I", nan_note=True, fit=self.size.width or None)
            if infl
            else Text("influence not computed for these responses", style="dim italic")
        )

    @on(LineTable.Highlighted, "#group-table")
    def _highlighted(self, event: LineTable.Highlighted) -> None:
        event.stop()
        self.compare(int(event.key))

    @on(LineTable.Selected, "#group-table")
    def _selected(self, event: LineTable.Selected) -> None:
        event.stop()
        if self.loaded is not None:
            self.post_message(msg.JumpTo(self.loaded.step, int(event.key), None))


def default_pair(table: ResponseTable, rows) -> tuple[int | None, int | None]:
    """The accepted and the rejected response first compared: the highest-reward accepted one and
    the lowest-reward rejected one (the sharpest contrast), None where the group has none."""
    acc, reward = table.cols["accepted"], table.cols["reward"]
    ok = [r for r in rows if acc[r] == 1.0]
    bad = [r for r in rows if acc[r] == 0.0]
    a = max(ok, key=lambda r: (np.nan_to_num(reward[r], nan=-np.inf), -r)) if ok else None
    b = min(bad, key=lambda r: (np.nan_to_num(reward[r], nan=np.inf), r)) if bad else None
    return a, b


def pair_text(table: ResponseTable, row: int, verdict: str, tokens: tuple, scale) -> Text:
    """A response's header and its text, each token's background its influence (NaN neutral)."""
    texts, infl, n = tokens
    c = table.cols
    t = Text()
    t.append(verdict, style="bold green" if verdict == "accepted" else "bold red")
    t.append(
        f"  row {row} · reward {fmt(c['reward'][row])} · I sum {fmt(c['influence_sum'][row])}\n", style="bold"
    )
    if infl is None:
        t.append(printable("".join(texts)))
    else:
        lut = style_lut("diverging")
        q = scale.quantize(infl).tolist()
        for text, v, k in zip(texts, infl.tolist(), q):
            t.append(printable(text), style=NAN_STYLE if math.isnan(v) else lut[k])
    if n > len(texts):
        t.append(f"\n… {n - len(texts)} more tokens (the tokens tab shows all)", style="dim")
    return t
