"""Influence quality of a run, from its trace (docs/ablate-collect.md has the definitions).

- `group_auc`: within each prompt group that has both accepted and rejected responses with an
  influence score, the probability that an accepted response's mean influence exceeds a rejected
  one's (Mann-Whitney AUC, ties count 1/2); averaged over all such (step, group) pairs.
- `top_overlap`: per step, among tokens with a finite influence score, the fraction of the top 20%
  by |influence| that are also in the top 20% by entropy (k = ceil(0.2 n), ties broken by position);
  averaged over steps.
- `spearman`: per step present in both runs whose responses are identical (same row count, prompt
  and response token ids), the Spearman rank correlation of token influence over tokens scored in
  both runs; averaged over such steps. Steps whose responses differ are skipped, so two runs whose
  training diverged get no value rather than a meaningless one.

Only numpy and pyarrow (through TraceReader); no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_FRACTION = 0.2


@dataclass
class Quality:
    auc: float | None = None
    auc_groups: int = 0  # (step, group) pairs averaged
    top_overlap: float | None = None
    overlap_steps: int = 0
    spearman: float | None = None
    spearman_steps: int = 0
    spearman_ref: str | None = None
    trace_steps: int | None = None
    auc_by_step: dict[int, float] | None = None


# --------------------------------------------------------------------------- statistics
def mann_whitney_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + P(pos == neg) / 2 over all pairs."""
    p = np.asarray(pos, dtype=np.float64)[:, None]
    n = np.asarray(neg, dtype=np.float64)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy's 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    boundaries = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    ranks_sorted = np.empty(len(x), dtype=np.float64)
    for lo, hi in zip(boundaries[:-1], boundaries[1:]):
        ranks_sorted[lo:hi] = (lo + 1 + hi) / 2.0  # mean of ranks lo+1 .. hi
    out = np.empty(len(x), dtype=np.float64)
    out[order] = ranks_sorted
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho (Pearson of average ranks); None with fewer than 3 values or a constant side."""
    if len(a) < 3 or len(a) != len(b):
        return None
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if denom == 0.0:
        return None
    return float((ra * rb).sum() / denom)


def top_overlap_fraction(
    influence: np.ndarray, entropy: np.ndarray, fraction: float = TOP_FRACTION
) -> float | None:
    """|top-k by |influence| ∩ top-k by entropy| / k, k = ceil(fraction·n)."""
    n = len(influence)
    if n == 0:
        return None
    k = max(1, math.ceil(fraction * n))
    top_i = np.argsort(-np.abs(influence), kind="stable")[:k]
    top_e = np.argsort(-entropy, kind="stable")[:k]
    return len(np.intersect1d(top_i, top_e)) / k


# --------------------------------------------------------------------------- trace access
def _null_mask(col: Any) -> np.ndarray:
    import pyarrow.compute as pc

    return np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)


def _rows(col: Any) -> tuple[np.ndarray, np.ndarray]:
    from archer.core.trace import list_values

    return list_values(col)


def scored_tokens(table: Any) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """(row indices, per-row influence, per-row entropy) of the rows that carry influence."""
    icol = table.column("influence")
    ivals, ioff = _rows(icol)
    evals, eoff = _rows(table.column("entropy"))
    null = _null_mask(icol)
    rows, infl, ent = [], [], []
    for r in range(table.num_rows):
        if null[r]:
            continue
        rows.append(r)
        infl.append(ivals[ioff[r] : ioff[r + 1]].astype(np.float64))
        ent.append(evals[eoff[r] : eoff[r + 1]].astype(np.float64))
    return rows, infl, ent


def _same_responses(a: Any, b: Any) -> bool:
    """Both step tables hold the same responses, row for row (prompt and response token ids)."""
    if a.num_rows != b.num_rows:
        return False
    for name in ("prompt_ids", "response_ids"):
        va, oa = _rows(a.column(name))
        vb, ob = _rows(b.column(name))
        if not np.array_equal(oa - oa[0], ob - ob[0]) or not np.array_equal(
            va[oa[0] : oa[-1]], vb[ob[0] : ob[-1]]
        ):
            return False
    return True


def within_group_aucs(groups: Any, accepted: Any, scores: Any) -> list[float]:
    """One AUC per group holding both accepted and rejected responses with a finite score: the
    probability that an accepted response's score exceeds a rejected one's (ties 1/2). `accepted`
    holds True / False / None (unknown); a None or non-finite score leaves the response out."""
    group = np.asarray(groups)
    out = []
    for g in dict.fromkeys(group.tolist()):  # groups in order of first appearance
        idx = np.flatnonzero(group == g)
        pos = [scores[i] for i in idx if accepted[i] is True and _finite(scores[i])]
        neg = [scores[i] for i in idx if accepted[i] is False and _finite(scores[i])]
        if pos and neg:
            out.append(mann_whitney_auc(np.array(pos), np.array(neg)))
    return out


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(x)


def group_auc(reader: Any, steps: list[int]) -> tuple[float | None, int, dict[int, float]]:
    """Mean within-group AUC of accepted vs rejected responses by mean influence (summary columns only)."""
    values: list[float] = []
    by_step: dict[int, float] = {}
    for step in steps:
        t = reader.step_overview(step)
        if t.num_rows == 0 or t.column("influence_mean").null_count == t.num_rows:
            continue
        step_vals = within_group_aucs(
            t.column("group_index").to_numpy(zero_copy_only=False),
            t.column("accepted").to_pylist(),
            t.column("influence_mean").to_pylist(),
        )
        if step_vals:
            by_step[step] = float(np.mean(step_vals))
            values.extend(step_vals)
    return (float(np.mean(values)) if values else None), len(values), by_step


def token_metrics(
    reader: Any, steps: list[int], ref: Any | None
) -> tuple[float | None, int, float | None, int]:
    """(mean top-20% overlap, its steps, mean Spearman vs `ref`, its steps)."""
    overlaps: list[float] = []
    rhos: list[float] = []
    ref_steps = set(ref.steps()) if ref is not None else set()
    for step in steps:
        cols = ["prompt_ids", "response_ids", "entropy", "influence"]
        t = reader.read_step(step, columns=cols)
        if t.column("influence").null_count == t.num_rows:
            continue
        rows, infl, ent = scored_tokens(t)
        if rows:
            i_all = np.concatenate(infl)
            e_all = np.concatenate(ent)
            ok = np.isfinite(i_all)
            frac = top_overlap_fraction(i_all[ok], e_all[ok])
            if frac is not None:
                overlaps.append(frac)
        if ref is None or step not in ref_steps:
            continue
        u = ref.read_step(step, columns=cols)
        if not _same_responses(t, u):
            continue
        rrows, rinfl, _ = scored_tokens(u)
        mine = dict(zip(rows, infl))
        xs, ys = [], []
        for r, v in zip(rrows, rinfl):
            if r in mine:
                a = mine[r]
                both = np.isfinite(a) & np.isfinite(v)
                xs.append(a[both])
                ys.append(v[both])
        if xs:
            rho = spearman(np.concatenate(xs), np.concatenate(ys))
            if rho is not None:
                rhos.append(rho)
    return (
        (float(np.mean(overlaps)) if overlaps else None),
        len(overlaps),
        (float(np.mean(rhos)) if rhos else None),
        len(rhos),
    )


def run_quality(run_dir: Any, ref_dir: Any | None = None, ref_name: str | None = None) -> Quality:
    """Every quality number of one run (Spearman only when `ref_dir` is given). Raises TraceError
    (or an Arrow/OS error) when the trace cannot be read; the caller turns that into a warning."""
    from archer.core.trace import TraceReader

    reader = TraceReader(run_dir)
    steps = reader.steps()
    q = Quality(trace_steps=len(steps))
    q.auc, q.auc_groups, q.auc_by_step = group_auc(reader, steps)
    ref = TraceReader(ref_dir) if ref_dir is not None else None
    q.top_overlap, q.overlap_steps, q.spearman, q.spearman_steps = token_metrics(reader, steps, ref)
    if ref is not None and (q.overlap_steps or q.auc_groups):  # only runs that have influence to compare
        q.spearman_ref = ref_name
    return q


def has_influence(run_dir: Any) -> bool:
    """Whether a run's trace holds any influence rows (from the manifest; no step file is read)."""
    from archer.core.trace import TraceReader
    from archer.errors import ArcherError

    try:
        reader = TraceReader(run_dir)
        return any(int(e.get("influence_rows") or 0) > 0 for e in reader.manifest())
    except (ArcherError, OSError, ValueError):  # an unreadable trace has no influence to compare
        return False
