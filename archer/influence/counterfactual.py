"""The counterfactual check of influence (issue 19, item 3): which token sets to take out of a
group's loss, what influence predicts their removal costs, and how well that agrees with what
re-running the update without them measures.

For a token t of response r, the trace's score s_t says what *reinforcing* t does to the group's
accepted-vs-rejected margin (positive: toward the accepted responses). The update does not
reinforce every token: it moves log π(t) in the direction of r's advantage. So the predicted
share of token t in this step's margin gain is

    e_t = sign(A_r) · s_t

(for an accepted response e_t = s_t; a rejected token that would pull toward the rejected side if
reinforced, s_t < 0, is pushed down by the update, which helps the margin: e_t > 0). Removing a
token set S from the loss is predicted to cost Σ_{t∈S} e_t of margin; the check measures the cost
as M(θ_full) − M(θ_{−S}), the group's margin after the full update minus its margin after the
update without S. Sets per group: the top q % of its scored tokens by e_t, the bottom q %, the top
q % by entropy, and random q % (several draws). Torch and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

SET_KINDS = ("top_influence", "bottom_influence", "top_entropy", "random")


@dataclass
class GroupTokens:
    """The scored tokens of one traced group: response row, position in the response, the trace's
    influence score, the sign of the response's advantage, and the token's entropy."""

    group: int
    rows: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    score: torch.Tensor  # [T] float64
    advantage_sign: torch.Tensor  # [T] float64, ±1 (0 for a zero advantage)
    entropy: torch.Tensor  # [T] float64

    @property
    def contribution(self) -> torch.Tensor:
        """e_t = sign(A_r)·s_t: the token's predicted share of the step's margin gain."""
        return self.advantage_sign * self.score

    def __len__(self) -> int:
        return int(self.rows.numel())


@dataclass
class TokenSet:
    """One set of tokens removed from one group's loss."""

    group: int
    kind: str  # one of SET_KINDS
    draw: int  # 0 except for random sets
    index: torch.Tensor  # [k] indices into the group's GroupTokens
    predicted: float  # Σ e_t over the set
    measured: float | None = None  # M(θ_full) − M(θ_{−S}), filled by the engine


def set_size(n_tokens: int, q: float) -> int:
    """k = round(q % of the group's scored tokens), at least 1 and at most all of them."""
    if not 0 < q <= 100:
        raise ValueError(f"q must be in (0, 100]; got {q}")
    return max(1, min(n_tokens, round(n_tokens * q / 100.0)))


def _top(values: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    # stable: equal values keep token order, so the sets do not depend on the sort implementation
    order = torch.sort(values, descending=largest, stable=True).indices
    return order[:k]


def token_sets(tokens: GroupTokens, q: float, draws: int, generator: torch.Generator) -> list[TokenSet]:
    """The four kinds of removal sets of one group (random: `draws` sets), each of size
    `set_size(len(tokens), q)`."""
    n = len(tokens)
    if n == 0:
        return []
    k = set_size(n, q)
    e = tokens.contribution
    picks: list[tuple[str, int, torch.Tensor]] = [
        ("top_influence", 0, _top(e, k, largest=True)),
        ("bottom_influence", 0, _top(e, k, largest=False)),
        ("top_entropy", 0, _top(tokens.entropy, k, largest=True)),
    ]
    for d in range(draws):
        picks.append(("random", d, torch.randperm(n, generator=generator)[:k]))
    return [
        TokenSet(tokens.group, kind, draw, idx, float(e.index_select(0, idx).sum()))
        for kind, draw, idx in picks
    ]


# --------------------------------------------------------------------------- statistics
def rankdata(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks, ties sharing their mean rank (float64)."""
    x = x.double()
    n = x.numel()
    order = torch.sort(x, stable=True).indices
    xs = x[order]
    ranks = torch.empty(n, dtype=torch.float64)
    lo = 0
    while lo < n:
        hi = lo + 1
        while hi < n and xs[hi] == xs[lo]:
            hi += 1
        ranks[order[lo:hi]] = (lo + 1 + hi) / 2.0
        lo = hi
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's ρ (Pearson of the ranks); NaN with fewer than 3 pairs or a constant side."""
    if a.numel() < 3:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def bootstrap_ci(
    a: torch.Tensor, b: torch.Tensor, *, reps: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's ρ over resampled (a, b) pairs."""
    n = a.numel()
    if n < 3 or reps <= 0:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(reps):
        idx = torch.randint(0, n, (n,), generator=g)
        v = spearman(a[idx], b[idx])
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    t = torch.tensor(sorted(vals), dtype=torch.float64)
    lo = torch.quantile(t, (1 - level) / 2).item()
    hi = torch.quantile(t, 1 - (1 - level) / 2).item()
    return float(lo), float(hi)


@dataclass
class KindSummary:
    """Mean predicted and measured margin cost of one set kind over the checked groups (random:
    averaged over draws first), the measured cost relative to the full update's margin gain."""

    kind: str
    sets: int
    predicted: float
    measured: float
    measured_relative: float | None  # mean of measured / |ΔM_full| over groups with ΔM_full ≠ 0


@dataclass
class Agreement:
    """How well influence predicted the measured effects of one step's removals."""

    spearman: float
    ci_low: float
    ci_high: float
    sets: int
    kinds: list[KindSummary] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # kinds by mean measured cost, largest first
    top_costs_most: float = float("nan")  # fraction of groups where top_influence costs the most


def summarize(
    sets: Sequence[TokenSet],
    full_gain: dict[int, float],
    *,
    reps: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Agreement:
    """Agreement over the measured sets (Spearman of predicted vs measured, with a bootstrap
    interval), per-kind means, their order, and how often the top-influence set cost the most."""
    done = [s for s in sets if s.measured is not None and math.isfinite(s.measured)]
    pred = torch.tensor([s.predicted for s in done], dtype=torch.float64)
    meas = torch.tensor([s.measured for s in done], dtype=torch.float64)
    rho = spearman(pred, meas)
    lo, hi = bootstrap_ci(pred, meas, reps=reps, level=level, seed=seed)
    kinds = []
    by_group_kind: dict[tuple[int, str], list[float]] = {}
    for s in done:
        by_group_kind.setdefault((s.group, s.kind), []).append(float(s.measured))
    for kind in SET_KINDS:
        mine = [s for s in done if s.kind == kind]
        if not mine:
            continue
        groups = sorted({s.group for s in mine})
        per_group = [sum(by_group_kind[(g, kind)]) / len(by_group_kind[(g, kind)]) for g in groups]
        rel = [
            m / abs(full_gain[g])
            for g, m in zip(groups, per_group)
            if g in full_gain and abs(full_gain[g]) > 0
        ]
        kinds.append(
            KindSummary(
                kind,
                len(mine),
                sum(s.predicted for s in mine) / len(mine),
                sum(per_group) / len(per_group),
                sum(rel) / len(rel) if rel else None,
            )
        )
    order = [k.kind for k in sorted(kinds, key=lambda k: -k.measured)]
    wins, groups_seen = 0, 0
    for g in sorted({s.group for s in done}):
        means = {k: sum(v) / len(v) for (gg, k), v in by_group_kind.items() if gg == g}
        if "top_influence" in means and len(means) > 1:
            groups_seen += 1
            wins += int(means["top_influence"] >= max(means.values()))
    return Agreement(
        rho, lo, hi, len(done), kinds, order, wins / groups_seen if groups_seen else float("nan")
    )


def group_margin(
    response_logp: torch.Tensor, accepted: Sequence[bool], contrastive_agg: str = "sum"
) -> float:
    """The accepted-vs-rejected margin of one group from its responses' summed log-probs, with the
    contrast's weights (`sum`: Σ_acc − Σ_rej; `mean`: mean_acc − mean_rej)."""
    acc = torch.tensor([bool(a) for a in accepted])
    lp = response_logp.double()
    if contrastive_agg == "mean":
        return float(lp[acc].mean() - lp[~acc].mean())
    return float(lp[acc].sum() - lp[~acc].sum())
