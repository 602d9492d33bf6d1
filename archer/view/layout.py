"""Token layout for the heatmaps: which line and column each token lands on at a given width.

Computed once per (response, width) and shared by the entropy and influence panes, so their
tokens line up exactly. Tokens wrap as whole cells (never mid-token); a token whose text holds a
newline ends its line. Pure Python + numpy, so the bench can time it without a running app.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenLayout:
    width: int
    gap: int
    line_start: np.ndarray  # [n_lines + 1]: first token of each line, then n
    x: np.ndarray  # [n]: column of each token within its line
    line_of: np.ndarray  # [n]: line of each token

    @property
    def n_lines(self) -> int:
        return len(self.line_start) - 1

    def tokens_on(self, line: int) -> range:
        return range(int(self.line_start[line]), int(self.line_start[line + 1]))

    def token_at(self, line: int, col: int) -> int | None:
        """The token drawn at (line, col), or the nearest one left of it on that line."""
        if not 0 <= line < self.n_lines:
            return None
        r = self.tokens_on(line)
        if not len(r):
            return None
        xs = self.x[r.start : r.stop].tolist()
        return r.start + max(0, bisect_right(xs, col) - 1)


def layout_tokens(widths: Sequence[int], breaks: Sequence[bool], width: int, gap: int = 0) -> TokenLayout:
    """Place tokens of cell widths `widths` into lines of `width` cells, `gap` cells apart."""
    n = len(widths)
    width = max(1, int(width))
    xs = np.zeros(n, dtype=np.int32)
    lines = np.zeros(n, dtype=np.int32)
    starts = [0]
    x = line = 0
    for i in range(n):
        w = widths[i]
        if x > 0 and x + w > width:
            line += 1
            starts.append(i)
            x = 0
        xs[i] = x
        lines[i] = line
        x += w + gap
        if breaks[i] and i + 1 < n:
            line += 1
            starts.append(i + 1)
            x = 0
    if n == 0:
        return TokenLayout(width, gap, np.zeros(1, dtype=np.int64), xs, lines)
    starts.append(n)
    return TokenLayout(width, gap, np.asarray(starts, dtype=np.int64), xs, lines)
