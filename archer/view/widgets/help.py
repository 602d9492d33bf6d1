"""The help screen: every key of the viewer (the same table docs/viewer.md lists)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str, str], ...] = (
    ("anywhere", "1 … 6", "tabs: responses, tokens, token table, top-K, group, across steps"),
    ("anywhere", "[  ]", "previous / next step"),
    ("anywhere", ",  .", "previous / next response (in the table's order)"),
    ("anywhere", "g", "group view of the current response's prompt"),
    ("anywhere", "c", "colour scale: per response → per step → step percentile (5–95)"),
    ("anywhere", "/", "search the response's text (Enter: first match); on top-K: the whole step"),
    ("anywhere", "n  N", "next / previous search match"),
    ("anywhere", "f", "filters: reward range (responses tab) or entropy/influence range (tokens)"),
    ("anywhere", "a", "cycle accepted filter: all → accepted → rejected → unknown"),
    ("anywhere", "e", "export the current view's tokens to CSV"),
    ("anywhere", "E", "export the step's response table to CSV"),
    ("anywhere", "p", "follow the current response's prompt across steps (across-steps tab)"),
    ("anywhere", "t", "show / hide the step list (hidden below 100 columns until toggled)"),
    ("anywhere", "r", "reload the step list from the manifest (follow a running training)"),
    ("anywhere", "ctrl+p", "command palette: jump to step N, uid X, commands"),
    ("anywhere", "escape", "leave an input field / close this help (enter in a filter also does)"),
    ("anywhere", "?  f1", "this help"),
    ("anywhere", "q", "quit"),
    ("tables", "↑  ↓  pgup  pgdn", "move the cursor a row / a screen"),
    ("tables", "home  end", "first / last row"),
    ("tables", "enter  click", "open the step / response / token under the cursor (click a row twice)"),
    ("tables", "s  S", "sort by the next column / reverse the order (or click a header)"),
    ("heatmap", "←  →  h  l", "previous / next token"),
    ("heatmap", "↑  ↓  k  j", "token on the line above / below"),
    ("heatmap", "pgup  pgdn", "a screen up / down"),
    ("heatmap", "home  end", "first / last token"),
    ("heatmap", "click", "put the cursor on a token"),
)


class HelpScreen(ModalScreen[None]):
    """A modal list of keys; any of escape, q, ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "close")]

    def compose(self):
        table = Table(title="archer view: keys", title_justify="left", expand=True)
        table.add_column("where", style="dim")
        table.add_column("key", style="bold cyan", no_wrap=True)
        table.add_column("does")
        for where, key, what in KEYS:
            table.add_row(where, Text(key), Text(what))
        with VerticalScroll(id="help-box"):
            yield Static(table)
            yield Static(
                Text(
                    "Colours: entropy viridis (dark low, bright high); influence blue < 0 < red, "
                    "grey italic = NaN (not captured). Tokens outside the filters are dimmed, "
                    "search matches underlined. Press escape to close.",
                    style="dim",
                )
            )
