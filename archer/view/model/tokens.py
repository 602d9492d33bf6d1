"""One response's tokens, and what the tokens tab does with them: filter, order, search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .responses import sort_order


@dataclass
class ResponseTokens:
    """The token data of one response (influence None when it was not computed)."""

    step: int
    row: int
    ids: np.ndarray  # int32
    entropy: np.ndarray  # float32
    influence: np.ndarray | None  # float32, NaN = not captured
    prompt_ids: np.ndarray  # int32
    meta: dict[str, Any]
    roles: np.ndarray | None = None  # agent traces: token_role, the schema's ROLE_* codes

    @property
    def n(self) -> int:
        return len(self.ids)


def token_filter_mask(
    entropy: np.ndarray,
    influence: np.ndarray | None,
    entropy_range: tuple[float | None, float | None] = (None, None),
    influence_range: tuple[float | None, float | None] = (None, None),
) -> np.ndarray:
    """True for tokens inside both ranges (None = open end). With an influence bound set, a token
    without influence (NaN, or none computed) is outside."""
    keep = np.ones(len(entropy), dtype=bool)
    lo, hi = entropy_range
    with np.errstate(invalid="ignore"):
        if lo is not None:
            keep &= entropy >= lo
        if hi is not None:
            keep &= entropy <= hi
        lo, hi = influence_range
        if lo is not None or hi is not None:
            if influence is None:
                keep[:] = False
            else:
                if lo is not None:
                    keep &= influence >= lo
                if hi is not None:
                    keep &= influence <= hi
    return keep


TOKEN_SORTS: tuple[tuple[str, bool], ...] = (
    ("position", False),
    ("entropy", True),
    ("entropy", False),
    ("influence", True),
    ("influence", False),
    ("position", True),
)


def token_order(
    tokens: ResponseTokens, key: str = "position", descending: bool = False, keep: np.ndarray | None = None
) -> np.ndarray:
    """Token positions to list: those in `keep`, sorted by position, entropy or influence."""
    pos = np.arange(tokens.n) if keep is None else np.flatnonzero(keep)
    if key == "position":
        return pos[::-1].copy() if descending else pos
    if key == "entropy":
        vals = tokens.entropy
    elif key == "influence":
        vals = tokens.influence if tokens.influence is not None else np.full(tokens.n, np.nan, np.float32)
    else:
        raise ValueError(f"cannot sort tokens by {key!r}")
    return pos[sort_order(vals[pos], descending)]


def search_tokens(texts: Sequence[str], query: str) -> list[tuple[int, int]]:
    """Matches of `query` in the response text as (first token, last token) ranges, in order.

    The text is searched as a whole, so a match may span tokens; smart case (case-sensitive only
    when the query has a capital letter). A numeric query in ids mode matches ids exactly.
    """
    if not query:
        return []
    fold = query == query.lower()
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=starts[1:])
    hay = "".join(texts)
    needle = query
    if fold:
        hay, needle = hay.lower(), query.lower()
    if len(hay) != starts[-1]:  # lower() changed lengths (rare Unicode): match per token instead
        return [(i, i) for i, t in enumerate(texts) if needle in (t.lower() if fold else t)]
    out: list[tuple[int, int]] = []
    at = hay.find(needle)
    while at >= 0:
        first = int(np.searchsorted(starts, at, side="right") - 1)
        last = int(np.searchsorted(starts, at + len(needle) - 1, side="right") - 1)
        if not out or out[-1] != (first, last):
            out.append((first, last))
        at = hay.find(needle, at + 1)
    return out


def search_ids(ids: np.ndarray, query: str) -> list[tuple[int, int]]:
    """Exact token-id matches (ids mode)."""
    try:
        want = int(query.strip())
    except ValueError:
        return []
    return [(int(i), int(i)) for i in np.flatnonzero(ids == want)]
