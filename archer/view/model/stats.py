"""Numbers reduced from a step's token columns (top-K, scale percentiles, influence statistics) and
the step x position entropy map; the columns themselves are never kept."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from archer.core.collect.quality import within_group_aucs
from archer.core.trace import list_values


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
    after: tuple[int, ...] = ()  # the ids that follow it (the window shown around a hit)
    length: int = 1  # tokens the hit spans (a text match may cover several): the last of `context`


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
    #: captured influence > 0 over all captured |influence| (0.5: as much pushes up as down)
    influence_positive_share: float = math.nan
    #: tokens of the responses that carry influence (captured or NaN): the denominator of coverage
    influence_row_tokens: int = 0
    #: mean within-group AUC of accepted vs rejected by mean influence, and over how many groups
    auc: float = math.nan
    auc_groups: int = 0


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
            after = ids[base + pos + 1 : min(base + pos + 1 + CONTEXT_TOKENS, int(i_off[row + 1]))]
            out.append(
                TokenHit(
                    kind,
                    rank,
                    row,
                    pos,
                    int(ids[base + pos]),
                    float(values[j]),
                    tuple(int(x) for x in ctx),
                    tuple(int(x) for x in after),
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
    n_inf, absmax, abs95, pos_share, row_tokens = 0, math.nan, math.nan, math.nan, 0
    top["influence high"], top["influence low"] = [], []
    if n_rows and infl_col.null_count < n_rows:
        inf_vals, f_off = list_values(infl_col)
        inf = inf_vals.astype(np.float32)
        f_base = int(f_off[0])
        inf_rel = inf[f_base : int(f_off[-1])]
        rel_f = f_off - f_base
        ok = inf_rel[np.isfinite(inf_rel)].astype(np.float64)
        n_inf = len(ok)
        row_tokens = len(inf_rel)
        if n_inf:
            a = np.abs(ok)
            absmax, abs95 = float(a.max()), float(np.percentile(a, 95))
            mass = float(a.sum())
            pos_share = float(ok[ok > 0].sum() / mass) if mass > 0 else math.nan
        top["influence high"] = hits("influence high", _topk(inf_rel, k, True), rel_f, inf_rel)
        top["influence low"] = hits("influence low", _topk(inf_rel, k, False), rel_f, inf_rel)
    if len(finite):
        p05, p95 = np.percentile(finite, [5, 95])
        e_min, e_max = float(finite.min()), float(finite.max())
    else:
        p05 = p95 = e_min = e_max = math.nan
    return StepStats(
        step,
        len(ent_rel),
        e_min,
        e_max,
        float(p05),
        float(p95),
        n_inf,
        absmax,
        abs95,
        top,
        influence_positive_share=pos_share,
        influence_row_tokens=row_tokens,
    )


def step_auc(table: Any) -> tuple[float, int]:
    """(mean within-group AUC, groups) of a step's ResponseTable: accepted vs rejected responses of
    one prompt ranked by mean influence (the same definition as `archer collect`'s auc column)."""
    acc = table.cols["accepted"]
    accepted = [None if math.isnan(v) else bool(v) for v in acc.tolist()]
    aucs = within_group_aucs(table.uid, accepted, table.cols["influence_mean"].tolist())
    return (float(np.mean(aucs)) if aucs else math.nan), len(aucs)


def fidelity_notes(summary: dict[str, Any]) -> list[str]:
    """What makes this trace's influence an approximation, from summary.json's influence settings
    (nothing when influence was off or the trace does not record its settings)."""
    s = summary.get("influence_settings") or {}
    if not s:
        return []
    notes = []
    mode = s.get("hessian_mode")
    if mode:
        notes.append(f"hessian {mode}" + (f" from {s['hessian_source']}" if s.get("hessian_source") else ""))
    if s.get("output_function"):
        notes.append(f"output {s['output_function']}")
    if s.get("projection"):
        factor = s.get("projection_dim_factor")
        notes.append(f"{s['projection']} projection" + (f" (dim factor {factor})" if factor else ""))
    if s.get("max_modules"):
        notes.append(f"at most {s['max_modules']} modules matching {s.get('module_name_filter', '?')}")
    cap = s.get("max_tokens_per_response")
    notes.append(f"≤ {cap} tokens per response captured (others NaN)" if cap else "every token captured")
    prompts = s.get("max_prompts_per_step")
    if prompts:
        notes.append(f"≤ {prompts} prompts per step")
    if s.get("storage_dtype"):
        notes.append(f"stored as {s['storage_dtype']}")
    return notes


@dataclass(frozen=True)
class EntropyMap:
    """Mean entropy per (step, position bin): rows follow `steps`, NaN where no token falls."""

    steps: list[int]
    bin_size: int
    means: np.ndarray  # [len(steps), n_bins] float32
    auc: np.ndarray | None = None  # [len(steps)] within-group influence AUC per step (NaN: none)

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
