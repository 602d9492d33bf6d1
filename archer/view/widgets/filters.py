"""Filter bars: which responses the table lists, and which tokens the heatmaps leave undimmed.

They only parse what the user types and post `Changed` with the parsed values; the app applies
them (and on Enter in a bound gives the focus back to the tab's table or heatmap). A bound that
does not parse marks its input invalid and is ignored (never an exception).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Label, Select

from archer.view.model import ACCEPT_FILTERS


def parse_bound(text: str) -> float | None:
    """'' -> None; a number -> float; anything else raises ValueError."""
    text = text.strip()
    if not text:
        return None
    v = float(text)
    if math.isnan(v):
        raise ValueError("NaN is not a bound")
    return v


def _bounds(bar: Horizontal, *ids: str) -> list[float | None]:
    out = []
    for i in ids:
        inp = bar.query_one(f"#{i}", Input)
        try:
            out.append(parse_bound(inp.value))
            inp.remove_class("-invalid")
        except ValueError:
            inp.add_class("-invalid")
            out.append(None)
    return out


class ResponseFilterBar(Horizontal):
    """accepted/rejected/unknown/all and a reward range for the response table."""

    @dataclass
    class Changed(Message):
        accepted: str
        reward_min: float | None
        reward_max: float | None

    def compose(self):
        yield Label("show", classes="bar-label")
        yield Select(
            [(a, a) for a in ACCEPT_FILTERS],
            value="all",
            allow_blank=False,
            compact=True,
            id="accepted-filter",
        )
        yield Label("reward", classes="bar-label")
        yield Input(placeholder="min", id="reward-min", classes="bound", compact=True)
        yield Label("..", classes="bar-label")
        yield Input(placeholder="max", id="reward-max", classes="bound", compact=True)
        yield Label("", id="response-count", classes="bar-label")

    def current(self) -> Changed:
        sel = self.query_one("#accepted-filter", Select).value
        lo, hi = _bounds(self, "reward-min", "reward-max")
        return self.Changed(str(sel) if sel in ACCEPT_FILTERS else "all", lo, hi)

    def set_accepted(self, value: str) -> None:
        self.query_one("#accepted-filter", Select).value = value

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.post_message(self.current())

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.current())


class TokenFilterBar(Horizontal):
    """Entropy and influence ranges (tokens outside are dimmed) and the token search box."""

    @dataclass
    class Changed(Message):
        entropy: tuple[float | None, float | None]
        influence: tuple[float | None, float | None]

    @dataclass
    class SearchChanged(Message):
        query: str
        submitted: bool

    def compose(self):
        yield Label("H", classes="bar-label")
        yield Input(placeholder="min", id="ent-min", classes="bound", compact=True)
        yield Input(placeholder="max", id="ent-max", classes="bound", compact=True)
        yield Label("I", classes="bar-label")
        yield Input(placeholder="min", id="inf-min", classes="bound", compact=True)
        yield Input(placeholder="max", id="inf-max", classes="bound", compact=True)
        yield Label("find", classes="bar-label")
        yield Input(placeholder="/ text (n, N: next, prev)", id="search", compact=True)
        yield Label("", id="search-count", classes="bar-label")

    def current(self) -> Changed:
        a, b, c, d = _bounds(self, "ent-min", "ent-max", "inf-min", "inf-max")
        return self.Changed((a, b), (c, d))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id == "search":
            self.post_message(self.SearchChanged(event.value, False))
        else:
            self.post_message(self.current())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":  # (the bounds' Enter goes on to the app: back to the view)
            event.stop()
            self.post_message(self.SearchChanged(event.value, True))
