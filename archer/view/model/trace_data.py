"""The trace opened for viewing: manifest-level step rows and cached per-step reads.

A step switch reads only the summary columns (`TraceReader.step_overview`); one response reads
only its row group; the step-wide token columns are read only for top-K and step colour scales,
reduced to a few numbers and dropped. Small LRU caches bound memory to a few recent steps whatever
the trace's size. All methods are safe to call from worker threads.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from archer.core.trace import TraceReader, list_values
from archer.core.trace.schema import TOKEN_ROLE_COLUMN

from .responses import ResponseTable
from .stats import (
    CONTEXT_TOKENS,
    EntropyMap,
    StepStats,
    TokenHit,
    compute_step_stats,
    entropy_by_position,
    step_auc,
)
from .tokens import ResponseTokens, search_ids, search_tokens

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


@dataclass(frozen=True)
class PromptStep:
    """One step in which a prompt was sampled: its responses there and how they did."""

    step: int
    rows: tuple[int, ...]
    reward_mean: float
    accuracy: float  # mean of `correct` (NaN: not graded)
    accepted: int
    rejected: int
    influence_mean: float  # mean of the responses' mean influence (NaN: none)


def _mean(values: np.ndarray) -> float:
    ok = values[np.isfinite(values)]
    return float(ok.mean()) if len(ok) else math.nan


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
        if TOKEN_ROLE_COLUMN in self.reader.schema(step).names:  # agent traces mark tool tokens
            columns.append(TOKEN_ROLE_COLUMN)
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
            roles=None if d.get(TOKEN_ROLE_COLUMN) is None else np.asarray(d[TOKEN_ROLE_COLUMN], np.int8),
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
            auc, groups = step_auc(self.step_table(step))
            s = replace(s, auc=auc, auc_groups=groups)
            self._stats.put(step, s)
        return s

    def search_step(
        self, step: int, query: str, decoder: Any, limit: int = 200
    ) -> tuple[list[TokenHit], int]:
        """Matches of `query` in every response of a step, in row order: at most `limit` hits
        (kind "match", each with the text window around it) and how many there are in all.

        Each response is decoded with `decoder` and searched like the tokens tab searches one
        (smart case, matches may span tokens); a decoder without text searches token ids.
        Reads the step's `response_ids` column once; nothing is cached.
        """
        t = self.reader.read_step(step, columns=["response_ids"])
        ids, off = list_values(t.column("response_ids"))
        hits: list[TokenHit] = []
        total = 0
        for r in range(t.num_rows):
            rid = ids[off[r] : off[r + 1]]
            if decoder.is_text:
                spans = search_tokens(decoder.token_texts(rid), query)
            else:
                spans = search_ids(rid, query)
            total += len(spans)
            for first, last in spans[: max(0, limit - len(hits))]:
                hits.append(
                    TokenHit(
                        "match",
                        len(hits) + 1,
                        r,
                        first,
                        int(rid[first]),
                        math.nan,
                        tuple(int(x) for x in rid[max(0, first - CONTEXT_TOKENS) : last + 1]),
                        tuple(int(x) for x in rid[last + 1 : last + 1 + CONTEXT_TOKENS]),
                        last - first + 1,
                    )
                )
        return hits, total

    def prompt_history(
        self, prompt_ids: Any, progress: Callable[[int, int], bool] | None = None
    ) -> list[PromptStep]:
        """Every step in which this exact prompt (token ids) was sampled, with its responses' rows
        and aggregates. uids are not compared: engines may give a prompt a new uid every step.
        Reads each step's `prompt_ids` column once (summary columns where it matches); `progress`
        as in `entropy_map`."""
        p = np.asarray(prompt_ids, dtype=np.int64)
        rows = self.steps()
        out: list[PromptStep] = []
        for i, r in enumerate(rows):
            t = self.reader.read_step(r.step, columns=["prompt_ids"])
            vals, off = list_values(t.column("prompt_ids"))
            same = [
                int(k)
                for k in np.flatnonzero(np.diff(off) == len(p))
                if np.array_equal(vals[off[k] : off[k + 1]], p)
            ]
            del t, vals
            if same:
                c = ResponseTable(r.step, self.reader.step_overview(r.step)).cols
                idx = np.array(same)
                out.append(
                    PromptStep(
                        r.step,
                        tuple(same),
                        _mean(c["reward"][idx]),
                        _mean(c["correct"][idx]),
                        int((c["accepted"][idx] == 1).sum()),
                        int((c["accepted"][idx] == 0).sum()),
                        _mean(c["influence_mean"][idx]),
                    )
                )
            if progress is not None and progress(i + 1, len(rows)) is False:
                break
        return out

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
        auc = np.full(len(rows), np.nan)
        for i, r in enumerate(rows):
            table = self.reader.read_step(r.step, columns=["entropy"])
            means[i] = entropy_by_position(table, bin_size, n_bins)
            del table
            if r.influence_rows:  # summary columns only (not cached: this runs in a worker)
                auc[i] = step_auc(ResponseTable(r.step, self.reader.step_overview(r.step)))[0]
            if progress is not None and progress(i + 1, len(rows)) is False:
                break
        return EntropyMap([r.step for r in rows], bin_size, means, auc)

    def cached_steps(self) -> list[int]:
        return self._tables.keys()
