"""The prompt panel: the response's metadata line and its decoded prompt (never markup)."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from archer.view.colors import fmt


def _flag(v: Any, yes: str, no: str) -> tuple[str, str]:
    if v is None:
        return "unknown", "dim"
    return (yes, "green") if v else (no, "red")


def meta_text(meta: dict[str, Any], n_tokens: int) -> Text:
    """step · row · group · sample · reward · correct · accepted · advantage · length."""
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f"step {meta['step']}  row {meta['row']}  ", style="bold")
    t.append("group ")
    t.append(str(meta.get("uid", "")), style="bold cyan")
    t.append(f"  sample {meta.get('sample_index')}  reward {fmt(meta.get('reward', math.nan))}  ")
    for key, (yes, no) in (("correct", ("correct", "wrong")), ("accepted", ("accepted", "rejected"))):
        word, style = _flag(meta.get(key), yes, no)
        t.append(f"{key} ")
        t.append(word, style=style)
        t.append("  ")
    t.append(f"advantage {fmt(meta.get('advantage', math.nan))}  length {n_tokens}")
    if meta.get("truncated"):
        t.append("  truncated", style="yellow")
    return t


class PromptPanel(VerticalScroll):
    """Metadata and prompt of the selected response."""

    def compose(self):
        yield Static(id="meta")
        yield Static(id="prompt-text")

    def show(self, meta: dict[str, Any], n_tokens: int, prompt: str, ids_mode: bool) -> None:
        self.query_one("#meta", Static).update(meta_text(meta, n_tokens))
        body = Text("prompt ", style="bold")
        if ids_mode:
            body.append("(token ids) ", style="dim")
        body.append(prompt if prompt else "(empty prompt)")
        self.query_one("#prompt-text", Static).update(body)
        self.scroll_home(animate=False)

    def clear(self, message: str = "") -> None:
        self.query_one("#meta", Static).update(Text(message, style="dim"))
        self.query_one("#prompt-text", Static).update("")
