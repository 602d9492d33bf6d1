"""Colour scales for the heatmaps: 256-entry style tables built once, values quantised with numpy.

Entropy uses a sequential scale (viridis: dark = low, bright = high); influence a diverging one
symmetric around 0 (blue negative, light grey 0, red positive). NaN influence (a token that was
not captured) gets a neutral dim style that no value maps to. Creating a Rich `Style` per token
is several times slower than looking one up, so every style a heatmap can draw is prebuilt here.
Rich downgrades the truecolor values to 256 or 16 colours on terminals that need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from rich.color import Color
from rich.style import Style
from rich.text import Text

# Anchor colours (position in [0, 1], RGB), interpolated linearly into 256 entries.
_SEQUENTIAL = (  # viridis
    (0.0, (68, 1, 84)),
    (0.1, (72, 36, 117)),
    (0.2, (65, 68, 135)),
    (0.3, (53, 95, 141)),
    (0.4, (42, 120, 142)),
    (0.5, (33, 145, 140)),
    (0.6, (34, 168, 132)),
    (0.7, (68, 191, 112)),
    (0.8, (122, 209, 81)),
    (0.9, (189, 223, 38)),
    (1.0, (253, 231, 37)),
)
_DIVERGING = (  # RdBu reversed: blue below 0, red above
    (0.0, (5, 48, 97)),
    (0.125, (33, 102, 172)),
    (0.25, (67, 147, 195)),
    (0.375, (146, 197, 222)),
    (0.5, (235, 235, 235)),
    (0.625, (244, 165, 130)),
    (0.75, (214, 96, 77)),
    (0.875, (178, 24, 43)),
    (1.0, (103, 0, 31)),
)
CMAPS = {"sequential": _SEQUENTIAL, "diverging": _DIVERGING}

NAN_STYLE = Style(color="rgb(150,150,150)", bgcolor="rgb(48,48,48)", italic=True)
DIM_STYLE = Style(color="rgb(90,90,90)")  # outside the entropy/influence filter
CURSOR_STYLE = Style(reverse=True, bold=True)
MATCH_STYLE = Style(bold=True, underline=True)

SCALE_MODES = ("response", "step", "percentile")
SCALE_HELP = {
    "response": "per response",
    "step": "per step",
    "percentile": "step p5..p95",
}


@cache
def lut_rgb(cmap: str) -> np.ndarray:
    """(256, 3) uint8 RGB table of a colour map."""
    anchors = CMAPS[cmap]
    xs = np.array([a[0] for a in anchors])
    rgb = np.array([a[1] for a in anchors], dtype=np.float64)
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, xs, rgb[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def _fg_for(r: int, g: int, b: int) -> str:
    lum = (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255
    return "rgb(0,0,0)" if lum > 0.5 else "rgb(255,255,255)"


@cache
def style_lut(cmap: str) -> tuple[Style, ...]:
    """256 cell styles (background from the map, black or white text for contrast)."""
    return tuple(
        Style(color=_fg_for(*map(int, c)), bgcolor=Color.from_rgb(*map(int, c))) for c in lut_rgb(cmap)
    )


@dataclass(frozen=True)
class Scale:
    """Maps values to LUT indices: [lo, hi] for a sequential map, [-lim, lim] for a diverging one."""

    lo: float
    hi: float
    diverging: bool = False
    mode: str = "response"

    @property
    def cmap(self) -> str:
        return "diverging" if self.diverging else "sequential"

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """uint8 indices into the LUT (NaN maps to 0: callers draw NaN with NAN_STYLE instead)."""
        v = np.asarray(values, dtype=np.float32)
        lo, hi = self.lo, self.hi
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            return np.full(len(v), 127 if self.diverging else 0, dtype=np.uint8)
        with np.errstate(invalid="ignore"):
            t = (np.clip(v, lo, hi) - lo) / (hi - lo)
        t = np.nan_to_num(t, nan=0.0)
        return np.rint(t * 255).astype(np.uint8)

    def label(self) -> str:
        return SCALE_HELP.get(self.mode, self.mode)


def sequential_scale(lo: float, hi: float, mode: str) -> Scale:
    return Scale(float(lo), float(hi), False, mode)


def diverging_scale(lim: float, mode: str) -> Scale:
    lim = abs(float(lim)) if lim is not None and math.isfinite(lim) else math.nan
    return Scale(-lim, lim, True, mode)


def finite_range(values: np.ndarray | None) -> tuple[float, float]:
    """(min, max) over finite values, (nan, nan) if there are none."""
    if values is None:
        return math.nan, math.nan
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.min()), float(v.max())


def fmt(x: float) -> str:
    """A compact number for legends and tables."""
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1e4 or a < 1e-3:
        return f"{x:.2e}"
    return f"{x:.3f}" if a < 10 else f"{x:.1f}"


def legend(scale: Scale, title: str, width: int = 16, nan_note: bool = False, fit: int | None = None) -> Text:
    """`title  lo ▕gradient▏ hi  (mode)`; with `nan_note` also the NaN swatch.

    With `fit` (the cells available) the gradient narrows, then the notes shorten, so the numbers
    at both ends are never cut on a narrow terminal."""
    lo, hi = fmt(scale.lo), fmt(scale.hi)
    fixed = len(title) + 1 + len(lo) + 1 + 1 + len(hi)
    # (label after the numbers, text after the NaN swatch), longest first
    notes = [
        (f"  {scale.label()}", " NaN: not captured"),
        (f"  {scale.label()}", " NaN"),
        ("", " NaN"),
        ("", ""),
    ]
    label, nan = notes[0]
    if fit is not None:
        for label, nan in notes:
            extra = len(label) + (5 + len(nan) if nan_note and nan else 0)
            if fixed + extra + 6 <= fit:
                width = max(6, min(width, fit - fixed - extra))
                break
        else:
            width = max(3, min(width, fit - fixed))
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{title} ", style="bold")
    text.append(lo + " ")
    luts = style_lut(scale.cmap)
    for i in range(width):
        q = int(round(i * 255 / max(1, width - 1)))
        text.append(" ", style=Style(bgcolor=luts[q].bgcolor))
    text.append(" " + hi)
    if label:
        text.append(label, style="dim")
    if nan_note and nan:
        text.append("  ")
        text.append(" ∙ ", style=NAN_STYLE)
        text.append(nan, style="dim")
    return text
