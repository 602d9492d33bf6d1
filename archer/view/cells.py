"""What a token looks like on screen: visible whitespace, never an empty or zero-width cell."""

from __future__ import annotations

import json
import unicodedata

EMPTY_CELL = "∅"  # a token that completes no character (its bytes show up in a later token)

# Visible whitespace and control characters: cell text never moves the cursor or rings a bell.
_VISIBLE = {ord(" "): "·", ord("\t"): "→", ord("\n"): "↵", ord("\r"): "␍", 0x7F: "␡"}
_VISIBLE.update({c: chr(0x2400 + c) for c in range(32) if c not in (9, 10, 13)})


def visible(text: str) -> str:
    """Whitespace and control characters as visible symbols (space ·, newline ↵, tab →)."""
    return text.translate(_VISIBLE)


_CONTROLS = {c: v for c, v in _VISIBLE.items() if c not in (ord(" "), ord("\t"), ord("\n"))}


def printable(text: str) -> str:
    """Running text for a pane: spaces, tabs and newlines kept, other control characters visible."""
    return text.translate(_CONTROLS)


def cell_text(raw: str) -> str:
    """What a heatmap cell shows for a token's raw text: visible whitespace, never empty."""
    if raw == "":
        return EMPTY_CELL
    shown = visible(raw)
    if all(unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf") for c in shown):
        return EMPTY_CELL + shown if shown else EMPTY_CELL  # nothing with width of its own
    return shown


def ends_line(raw: str) -> bool:
    """Whether the heatmap starts a new line after this token (its text holds a newline)."""
    return "\n" in raw


def quote(raw: str) -> str:
    """A token's text for the readout and tables: visible whitespace inside quotes."""
    return json.dumps(visible(raw), ensure_ascii=False)
