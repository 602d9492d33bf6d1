"""The viewer's data access layer: what to read from a trace, when, and what to keep.

No Textual here, so the bench and the trace tools use it too. A step switch reads only the
summary columns (`TraceReader.step_overview`); one response reads only its row group; the
step-wide token columns are read only for top-K and step colour scales, reduced to a few numbers
and dropped. Small LRU caches bound memory to a few recent steps whatever the trace's size.
All methods are safe to call from worker threads.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from archer.core.trace import TraceReader, list_values

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small thread-safe LRU mapping (the caches hold whole steps, so they stay tiny)."""

    def __init__(self, maxsize: int):
        self.maxsize = max(1, int(maxsize))
        self._d: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._d:
                return None
            self._d.move_to_end(key)
            return self._d[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._d)

    def __len__(self) -> int:
        return len(self._d)


def _num(x: Any) -> float:
    """A manifest number as float (None -> NaN)."""
    return math.nan if x is None else float(x)


# --------------------------------------------------------------------------------------------
# steps (manifest only)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRow:
    """One line of the step list, straight from the manifest (no step file opened)."""

    step: int
    n_responses: int
    n_tokens: int
    reward_mean: float
    accuracy: float
    entropy_mean: float
    influence_rows: int
    bytes: int


# --------------------------------------------------------------------------------------------
# one step's response table
# --------------------------------------------------------------------------------------------

#: (key, label) of the response table's columns, in display order; every one is sortable.
RESPONSE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("row", "row"),
    ("uid", "group"),
    ("sample_index", "sample"),
    ("reward", "reward"),
    ("correct", "correct"),
    ("accepted", "accepted"),
    ("response_length", "length"),
    ("entropy_mean", "H mean"),
    ("entropy_max", "H max"),
    ("influence_sum", "I sum"),
    ("influence_mean", "I mean"),
)

ACCEPT_FILTERS = ("all", "accepted", "rejected", "unknown")

_FLOAT_COLUMNS = ("reward", "advantage", "entropy_mean", "entropy_max", "influence_sum", "influence_mean")
_INT_COLUMNS = ("row", "group_index", "sample_index", "response_length")
_BOOL_COLUMNS = ("correct", "accepted", "truncated")  # as float: 1, 0, NaN = unknown


class ResponseTable:
    """The summary columns of one step as numpy arrays, with sorting, filtering and groups.

    Nullable booleans become floats (1.0, 0.0, NaN) so one argsort handles every column.
    """

    def __init__(self, step: int, table: Any):
        import pyarrow.compute as pc

        self.step = int(step)
        self.n = int(table.num_rows)
        names = set(table.column_names)
        cols: dict[str, np.ndarray] = {}
        for name in _FLOAT_COLUMNS:
            if name in names:
                cols[name] = table.column(name).to_numpy().astype(np.float64)
            else:
                cols[name] = np.full(self.n, np.nan)
        for name in _INT_COLUMNS:
            if name in names:
                cols[name] = table.column(name).to_numpy().astype(np.int64)
            else:
                cols[name] = (
                    np.arange(self.n, dtype=np.int64) if name == "row" else np.zeros(self.n, np.int64)
                )
        for name in _BOOL_COLUMNS:
            if name in names:
                col = table.column(name)
                vals = pc.fill_null(col, False).to_numpy().astype(np.float64)
                vals[col.is_null().to_numpy(zero_copy_only=False)] = np.nan
                cols[name] = vals
            else:
                cols[name] = np.full(self.n, np.nan)
        self.cols = cols
        self.uid = np.array(
            table.column("uid").to_pylist() if "uid" in names else [""] * self.n, dtype=object
        )
        self.data_source = (
            table.column("data_source").to_pylist() if "data_source" in names else [None] * self.n
        )
        self._groups: dict[str, np.ndarray] | None = None

    # ---- lookups ----------------------------------------------------------------------------

    def record(self, row: int) -> dict[str, Any]:
        """One response's summary values as Python scalars (NaN stays NaN, unknown bools None)."""
        out: dict[str, Any] = {
            "step": self.step,
            "uid": str(self.uid[row]),
            "data_source": self.data_source[row],
        }
        for name, vals in self.cols.items():
            v = vals[row]
            if name in _BOOL_COLUMNS:
                out[name] = None if np.isnan(v) else bool(v)
            elif name in _INT_COLUMNS:
                out[name] = int(v)
            else:
                out[name] = float(v)
        return out

    @property
    def groups(self) -> dict[str, np.ndarray]:
        """uid -> its rows, ordered by sample index; in order of first appearance."""
        if self._groups is None:
            groups: dict[str, list[int]] = {}
            for i, u in enumerate(self.uid):
                groups.setdefault(u, []).append(i)
            si = self.cols["sample_index"]
            self._groups = {
                u: np.array(sorted(rows, key=lambda r: (si[r], r)), dtype=np.int64)
                for u, rows in groups.items()
            }
        return self._groups

    def group_rows(self, uid: str) -> np.ndarray:
        return self.groups.get(uid, np.zeros(0, dtype=np.int64))

    def find_uid(self, text: str) -> str | None:
        """The uid equal to `text`, else the first one that starts with it or contains it."""
        if text in self.groups:
            return text
        for pred in (lambda u: u.startswith(text), lambda u: text in u):
            for u in self.groups:
                if pred(u):
                    return u
        return None

    # ---- ordering and filtering ---------------------------------------------------------------

    def order(
        self,
        sort: str = "row",
        descending: bool = False,
        accepted: str = "all",
        reward_min: float | None = None,
        reward_max: float | None = None,
    ) -> np.ndarray:
        """Row indices to show: filtered, then sorted (stable; unknown values always last)."""
        keep = np.ones(self.n, dtype=bool)
        acc = self.cols["accepted"]
        if accepted == "accepted":
            keep &= acc == 1.0
        elif accepted == "rejected":
            keep &= acc == 0.0
        elif accepted == "unknown":
            keep &= np.isnan(acc)
        elif accepted != "all":
            raise ValueError(f"accepted filter must be one of {ACCEPT_FILTERS}, got {accepted!r}")
        reward = self.cols["reward"]
        with np.errstate(invalid="ignore"):
            if reward_min is not None:
                keep &= reward >= reward_min
            if reward_max is not None:
                keep &= reward <= reward_max
        rows = np.flatnonzero(keep)
        return rows[sort_order(self._sort_values(sort)[rows], descending)]

    def _sort_values(self, key: str) -> np.ndarray:
        if key == "uid":
            return self.uid
        if key not in self.cols:
            raise ValueError(f"cannot sort responses by {key!r}")
        return self.cols[key]


def sort_order(values: np.ndarray, descending: bool) -> np.ndarray:
    """A stable argsort that keeps NaN (and None) last in both directions."""
    if values.dtype == object:
        idx = sorted(range(len(values)), key=lambda i: str(values[i]), reverse=descending)
        return np.array(idx, dtype=np.int64)
    v = values.astype(np.float64)
    nan = np.isnan(v)
    key = np.where(nan, np.inf, -v if descending else v)
    order = np.argsort(key, kind="stable")
    return np.concatenate([order[~nan[order]], order[nan[order]]])


# --------------------------------------------------------------------------------------------
# one response's tokens
# --------------------------------------------------------------------------------------------


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
    roles: np.ndarray | None = None  # agent traces: token_role (0 model, 1 tool result, 2 tool call)

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


# --------------------------------------------------------------------------------------------
# step-wide token statistics (top-K, colour scales)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenHit:
    """One top-K token: where it is and its value."""

    kind: str  # "entropy high", "entropy low", "influence high", "influence low"
    rank: int
    row: int
    pos: int
    token_id: int
    value: float
    context: tuple[int, ...] = ()  # the ids up to and including it (for decoding in context)


@dataclass(frozen=True)
class StepStats:
    """Numbers reduced from a step's token columns; the columns themselves are not kept."""

    step: int
    tokens: int
    entropy_min: float
    entropy_max: float
    entropy_p05: float
    entropy_p95: float
    influence_tokens: int  # captured (non-NaN) influence values
    influence_absmax: float
    influence_abs_p95: float
    top: dict[str, list[TokenHit]] = field(default_factory=dict)


TOPK_KINDS = ("entropy high", "entropy low", "influence high", "influence low")
CONTEXT_TOKENS = 8


def _topk(values: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Indices of the k largest/smallest finite values, best first (ties by index).

    One argpartition over the whole array; non-finite values (NaN: not captured) are moved to the
    far end first, and only when there are any, so the usual case copies nothing.
    """
    n = len(values)
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, n)
    bad = ~np.isfinite(values)
    v = np.where(bad, -np.inf if largest else np.inf, values) if bad.any() else values
    if largest:
        idx = np.argpartition(v, n - k)[n - k :]
    else:
        idx = np.argpartition(v, k - 1)[:k]
    idx = idx[np.isfinite(values[idx])]
    vals = values[idx]
    return idx[np.lexsort((idx, -vals if largest else vals))]


def compute_step_stats(step: int, table: Any, k: int = 20) -> StepStats:
    """Reduce a step table holding `response_ids`, `entropy`, `influence` to a StepStats."""
    ent_vals, e_off = list_values(table.column("entropy"))
    ent = ent_vals.astype(np.float32)
    ids, i_off = list_values(table.column("response_ids"))
    n_rows = table.num_rows
    top: dict[str, list[TokenHit]] = {}

    def hits(kind: str, flat: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> list[TokenHit]:
        out = []
        for rank, j in enumerate(flat, 1):
            row = int(np.searchsorted(offsets, j, side="right") - 1)
            pos = int(j - offsets[row])
            base = int(i_off[row])
            ctx = ids[base + max(0, pos - CONTEXT_TOKENS) : base + pos + 1]
            out.append(
                TokenHit(
                    kind, rank, row, pos, int(ids[base + pos]), float(values[j]), tuple(int(x) for x in ctx)
                )
            )
        return out

    # offsets are absolute into the flat values; work relative to the first row's start
    e_base = int(e_off[0])
    ent_rel = ent[e_base : int(e_off[-1])]
    rel_off = e_off - e_base
    finite = ent_rel[np.isfinite(ent_rel)]
    top["entropy high"] = hits("entropy high", _topk(ent_rel, k, True), rel_off, ent_rel)
    top["entropy low"] = hits("entropy low", _topk(ent_rel, k, False), rel_off, ent_rel)

    infl_col = table.column("influence")
    n_inf, absmax, abs95 = 0, math.nan, math.nan
    top["influence high"], top["influence low"] = [], []
    if n_rows and infl_col.null_count < n_rows:
        inf_vals, f_off = list_values(infl_col)
        inf = inf_vals.astype(np.float32)
        f_base = int(f_off[0])
        inf_rel = inf[f_base : int(f_off[-1])]
        rel_f = f_off - f_base
        ok = inf_rel[np.isfinite(inf_rel)]
        n_inf = len(ok)
        if n_inf:
            a = np.abs(ok)
            absmax, abs95 = float(a.max()), float(np.percentile(a, 95))
        top["influence high"] = hits("influence high", _topk(inf_rel, k, True), rel_f, inf_rel)
        top["influence low"] = hits("influence low", _topk(inf_rel, k, False), rel_f, inf_rel)
    if len(finite):
        p05, p95 = np.percentile(finite, [5, 95])
        e_min, e_max = float(finite.min()), float(finite.max())
    else:
        p05 = p95 = e_min = e_max = math.nan
    return StepStats(step, len(ent_rel), e_min, e_max, float(p05), float(p95), n_inf, absmax, abs95, top)


# --------------------------------------------------------------------------------------------
# across steps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntropyMap:
    """Mean entropy per (step, position bin): rows follow `steps`, NaN where no token falls."""

    steps: list[int]
    bin_size: int
    means: np.ndarray  # [len(steps), n_bins] float32

    @property
    def n_bins(self) -> int:
        return int(self.means.shape[1]) if self.means.ndim == 2 else 0


def entropy_by_position(table: Any, bin_size: int, n_bins: int) -> np.ndarray:
    """Mean entropy per position bin of one step (positions past the last bin go into it)."""
    vals, off = list_values(table.column("entropy"))
    base, end = (int(off[0]), int(off[-1])) if len(off) else (0, 0)
    v = vals[base:end].astype(np.float32)
    lengths = np.diff(off).astype(np.int64)
    pos = np.arange(len(v), dtype=np.int64) - np.repeat(off[:-1].astype(np.int64) - base, lengths)
    b = np.minimum(pos // max(1, bin_size), n_bins - 1)
    ok = np.isfinite(v)
    sums = np.bincount(b[ok], weights=v[ok], minlength=n_bins)
    counts = np.bincount(b[ok], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)


# --------------------------------------------------------------------------------------------
# the trace
# --------------------------------------------------------------------------------------------


class TraceData:
    """A trace opened for viewing: manifest-level step rows and cached per-step reads.

    `max_steps` bounds how many steps' response tables (and top-K stats) stay in memory;
    `max_responses` how many responses' token arrays do.
    """

    def __init__(self, path: str | Path, max_steps: int = 4, max_responses: int = 32):
        self.reader = TraceReader(path)
        self.dir = self.reader.dir
        self.summary = self.reader.summary
        self._tables: LRU[int, ResponseTable] = LRU(max_steps)
        self._stats: LRU[int, StepStats] = LRU(max_steps * 2)
        self._responses: LRU[tuple[int, int], ResponseTokens] = LRU(max_responses)

    @property
    def warnings(self) -> list[str]:
        return list(self.reader.warnings)

    def steps(self) -> list[StepRow]:
        """Every step of the manifest whose file exists, with the manifest's aggregates."""
        present = set(self.reader.steps())
        out = []
        for e in self.reader.manifest():
            if int(e["step"]) not in present:
                continue
            out.append(
                StepRow(
                    step=int(e["step"]),
                    n_responses=int(e.get("n_responses") or 0),
                    n_tokens=int(e.get("n_tokens") or 0),
                    reward_mean=_num(e.get("reward_mean")),
                    accuracy=_num(e.get("accuracy")),
                    entropy_mean=_num(e.get("entropy_mean")),
                    influence_rows=int(e.get("influence_rows") or 0),
                    bytes=int(e.get("bytes") or 0),
                )
            )
        return out

    def step_table(self, step: int) -> ResponseTable:
        """The step's response table (summary columns only; cached)."""
        t = self._tables.get(step)
        if t is None:
            t = ResponseTable(step, self.reader.step_overview(step))
            self._tables.put(step, t)
        return t

    def response(self, step: int, row: int) -> ResponseTokens:
        """One response's tokens, reading only its row group (cached)."""
        key = (int(step), int(row))
        r = self._responses.get(key)
        if r is not None:
            return r
        columns = ["prompt_ids", "response_ids", "entropy", "influence"]
        if "token_role" in self.reader.schema(step).names:  # agent traces mark tool tokens
            columns.append("token_role")
        d = self.reader.read_response(step, row, columns=columns)
        infl = d["influence"]
        meta = self.step_table(step).record(row)
        r = ResponseTokens(
            step=int(step),
            row=int(row),
            ids=np.asarray(d["response_ids"], dtype=np.int32),
            entropy=np.asarray(d["entropy"], dtype=np.float32),
            influence=None if infl is None else np.asarray(infl, dtype=np.float32),
            prompt_ids=np.asarray(d["prompt_ids"], dtype=np.int32),
            meta=meta,
            roles=None if d.get("token_role") is None else np.asarray(d["token_role"], dtype=np.int8),
        )
        self._responses.put(key, r)
        return r

    def step_stats(self, step: int, k: int = 20) -> StepStats:
        """Top-K tokens and scale percentiles of a step; reads its token columns once (cached)."""
        s = self._stats.get(step)
        if s is None:
            table = self.reader.read_step(step, columns=["response_ids", "entropy", "influence"])
            s = compute_step_stats(step, table, k)
            del table
            self._stats.put(step, s)
        return s

    def entropy_map(
        self,
        n_bins: int = 48,
        progress: Callable[[int, int], bool] | None = None,
    ) -> EntropyMap:
        """Mean entropy per (step, position bin) over all steps, one step in memory at a time.

        `progress(done, total)` is called after each step; returning False stops early.
        """
        rows = self.steps()
        max_len = 1
        for r in rows:  # the bin size from the longest response: one tiny column per step
            lens = self.reader.read_step(r.step, columns=["response_length"]).column("response_length")
            if len(lens):
                max_len = max(max_len, int(np.max(lens.to_numpy())))
        bin_size = max(1, math.ceil(max_len / n_bins))
        n_bins = max(1, math.ceil(max_len / bin_size))
        means = np.full((len(rows), n_bins), np.nan, dtype=np.float32)
        for i, r in enumerate(rows):
            table = self.reader.read_step(r.step, columns=["entropy"])
            means[i] = entropy_by_position(table, bin_size, n_bins)
            del table
            if progress is not None and progress(i + 1, len(rows)) is False:
                break
        return EntropyMap([r.step for r in rows], bin_size, means)

    def cached_steps(self) -> list[int]:
        return self._tables.keys()


# --------------------------------------------------------------------------------------------
# rows for export (CSV/JSONL): one source for the viewer and `archer trace export`
# --------------------------------------------------------------------------------------------

RESPONSE_EXPORT_COLUMNS = (
    "step",
    "row",
    "uid",
    "group_index",
    "sample_index",
    "data_source",
    "reward",
    "correct",
    "accepted",
    "advantage",
    "response_length",
    "truncated",
    "entropy_mean",
    "entropy_max",
    "influence_sum",
    "influence_mean",
)
TOKEN_EXPORT_COLUMNS = ("step", "row", "uid", "position", "token_id", "text", "entropy", "influence")


def clean(v: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, so CSV shows an empty cell and JSON null."""
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) else float(f"{f:.7g}")
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def response_records(
    table: ResponseTable, rows: Sequence[int] | np.ndarray | None = None
) -> Iterator[dict[str, Any]]:
    """The response table as dicts (columns RESPONSE_EXPORT_COLUMNS), in `rows` order."""
    for r in range(table.n) if rows is None else rows:
        rec = table.record(int(r))
        yield {c: clean(rec.get(c)) for c in RESPONSE_EXPORT_COLUMNS}


def token_records(
    tokens: ResponseTokens,
    texts: Sequence[str] | None,
    positions: Sequence[int] | np.ndarray | None = None,
) -> Iterator[dict[str, Any]]:
    """One response's tokens as dicts (TOKEN_EXPORT_COLUMNS); text is None without a tokenizer."""
    uid = tokens.meta.get("uid")
    infl = tokens.influence
    for p in range(tokens.n) if positions is None else positions:
        p = int(p)
        yield {
            "step": tokens.step,
            "row": tokens.row,
            "uid": uid,
            "position": p,
            "token_id": int(tokens.ids[p]),
            "text": None if texts is None else texts[p],
            "entropy": clean(tokens.entropy[p]),
            "influence": None if infl is None else clean(infl[p]),
        }


def step_token_records(reader: TraceReader, step: int, decoder: Any = None) -> Iterator[dict[str, Any]]:
    """Every token of a step as dicts (TOKEN_EXPORT_COLUMNS), reading the token columns once.

    `decoder` (a `decode.Decoder`) fills `text`; without one it is None.
    """
    t = reader.read_step(step, columns=["uid", "response_ids", "entropy", "influence"])
    ids, i_off = list_values(t.column("response_ids"))
    ent, e_off = list_values(t.column("entropy"))
    inf_col = t.column("influence")
    inf, f_off = list_values(inf_col)
    inf_null = inf_col.is_null().to_numpy(zero_copy_only=False) if t.num_rows else np.zeros(0, bool)
    uids = t.column("uid").to_pylist()
    for r in range(t.num_rows):
        rid = ids[i_off[r] : i_off[r + 1]]
        re_ = ent[e_off[r] : e_off[r + 1]].astype(np.float32)
        ri = None if inf_null[r] else inf[f_off[r] : f_off[r + 1]].astype(np.float32)
        texts = decoder.token_texts(rid) if decoder is not None else None
        tok = ResponseTokens(step, r, rid, re_, ri, np.zeros(0, np.int32), {"uid": uids[r]})
        yield from token_records(tok, texts)
