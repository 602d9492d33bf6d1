"""ARPO and AEPO branching rules, as RUC-NLPIR/ARPO codes them (docs/agentic.md, reference §1.2, §1.5).

Segment entropy: over the first `k` generated tokens of a segment (after the prompt or after a
tool result), the top-`topk` truncated entropies -Σ p log p are *summed* and divided by ln |V|.

ARPO: after tool result t, a trajectory under its prompt's budget branches iff
`clip(U - β·ΔH, 0, 1) <= α` with U ~ U(0, 1), i.e. with probability clip(α + β·ΔH). ΔH is the
entropy of the segment that *ended* in tool call t minus the trajectory's base entropy (its first
segment; for a branch, its first post-branch segment). That is the one-step lag of the original:
at the first tool call ΔH = 0 and P = α. The base lives on the trajectory, so it is fresh for
every prompt of every step (the original kept it in a dict keyed by batch index that was never
cleared, so from step 2 a trajectory compared itself with another prompt's base).

AEPO (its `vllm_rollout_with_tools.py`): branch iff `clip((U + β·ΔH)·max(0, 1 - penalty·c), 0, 1) >= α`.
c counts, per prompt, the consecutive lock-step iterations in which the prompt gained a rollout (a
branch or a fresh one); an iteration in which no prompt gained one leaves every c as it was; every
decision of an iteration reads the c of the iteration before (`ConsecutiveCounter`). A dynamic
number of global rollouts m = clip(int(n·σ(0.5·(H_root - H̄_tool))) + 1, 1, n), H_root from a short
root sample and H̄_tool the mean entropy of every segment of one monitoring tool rollout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BranchSettings:
    """Per-step rollout budget and branching knobs (see `agent.*` in docs/config.md)."""

    n: int  # trajectories per prompt (the budget, never exceeded, always filled)
    initial_rollouts: int
    beam_size: int = 2
    branch_probability: float = 0.5  # alpha
    entropy_weight: float = 0.2  # beta
    entropy_tokens: int = 20
    entropy_topk: int = 10
    mode: str = "arpo"  # arpo | aepo | none
    refill: str = "one"  # one | all: fresh rollouts added when a prompt has no live trajectory left
    consecutive_penalty: float = 0.05  # AEPO
    dynamic_rollouts: bool = False  # AEPO's entropy-balanced global-rollout count
    consecutive_count: str = "iteration"  # AEPO's c: per lock-step iteration (the source) or per decision

    def __post_init__(self) -> None:
        if not 1 <= self.initial_rollouts <= self.n:
            raise ValueError(f"initial_rollouts must be in [1, n={self.n}], got {self.initial_rollouts}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.consecutive_count not in ("iteration", "decision"):
            raise ValueError(f"consecutive_count: 'iteration' or 'decision', not {self.consecutive_count!r}")

    @property
    def lockstep(self) -> bool:
        """AEPO with c counted per iteration: rows wait for each other at their branching decisions."""
        return self.mode == "aepo" and self.consecutive_count == "iteration"


def arpo_branches(u: float, delta_h: float, alpha: float, beta: float) -> bool:
    """ARPO's rule as coded: clip(U - β·ΔH, 0, 1) <= α."""
    return min(1.0, max(0.0, u - beta * delta_h)) <= alpha


def aepo_branches(
    u: float, delta_h: float, alpha: float, beta: float, consecutive: int, penalty: float = 0.05
) -> bool:
    """AEPO's rule as coded: clip((U + β·ΔH)·max(0, 1 - penalty·c), 0, 1) >= α."""
    score = (u + beta * delta_h) * max(0.0, 1.0 - penalty * consecutive)
    return min(1.0, max(0.0, score)) >= alpha


class ConsecutiveCounter:
    """AEPO's consecutive-branch counter c, one per prompt, as its rollout loop keeps it.

    `rule="iteration"` (the source, `vllm_rollout_with_tools.py:678-680, 1025-1036`): reset at the
    start of a step; at the end of each lock-step iteration, if any prompt gained a rollout (a branch
    or a fresh refill), c += 1 for those prompts and c = 0 for all others; if none did, c stays.
    `rule="decision"`: c += 1 at each branching decision that branched, 0 after one that did not.
    """

    def __init__(self, prompts: int, rule: str = "iteration"):
        self.rule = rule
        self.c = [0] * prompts

    def decided(self, prompt: int, branched: bool) -> None:
        if self.rule == "decision":
            self.c[prompt] = self.c[prompt] + 1 if branched else 0

    def iteration_done(self, gained: set[int]) -> None:
        if self.rule == "iteration" and gained:
            self.c = [c + 1 if g in gained else 0 for g, c in enumerate(self.c)]


def entropy_delta(last_h: float | None, base_h: float | None) -> float:
    """ΔH at a branching decision: the entropy of the segment that ended in the latest tool call
    minus the trajectory's base (its first segment; a branch's first post-branch one). 0 before any."""
    last = last_h or 0.0
    return last - (base_h if base_h is not None else last)


def segment_entropy(truncated_sum: float, vocab_size: int) -> float:
    """A segment's entropy: the summed top-k truncated entropies of its first tokens over ln |V|."""
    return float(truncated_sum) / math.log(vocab_size)


def fork_budget(b: BranchSettings, room: int) -> int:
    """How many copies a trajectory that branches may make, given the prompt's room left in its
    budget; 0 means no decision is taken at all (no branching mode, no room, a beam of 1)."""
    if b.mode == "none" or room <= 0 or b.beam_size < 2:
        return 0
    return min(b.beam_size - 1, room)


def branch_decision(b: BranchSettings, delta_h: float, u: float, consecutive: int = 0) -> bool:
    """ARPO's or AEPO's rule for one draw U (the one code path of both engines' agent loops)."""
    if b.mode == "aepo":
        return aepo_branches(
            u, delta_h, b.branch_probability, b.entropy_weight, consecutive, b.consecutive_penalty
        )
    return arpo_branches(u, delta_h, b.branch_probability, b.entropy_weight)


def dynamic_global_rollouts(n: int, h_root: float, h_tool: float) -> int:
    """AEPO's global-rollout count (β = 0.5 as hard-coded there)."""
    m = int(n / (1.0 + math.exp(-0.5 * (h_root - h_tool)))) + 1
    return max(1, min(n, m))


def dynamic_rollout_count(
    n: int, root_hs: Sequence[float], monitor_hs: Sequence[float]
) -> tuple[float, float, int]:
    """AEPO's dynamic phase for one prompt, from its two discarded probes (both engines' loops):
    (H_root, H̄_tool, m). H_root is the root sample's first segment entropy (0 without one), H̄_tool
    the mean over every segment of the monitoring tool rollout (H_root without any)."""
    h_root = float(root_hs[0]) if len(root_hs) else 0.0
    h_tool = float(np.mean(monitor_hs)) if len(monitor_hs) else h_root
    return h_root, h_tool, dynamic_global_rollouts(n, h_root, h_tool)


def lockstep_forks(
    b: BranchSettings,
    room: int,
    deltas: Sequence[float],
    consecutive: int,
    draw: Callable[[], float],
) -> tuple[list[int], list[tuple[int, float, bool]]]:
    """One prompt's decisions at the end of an AEPO lock-step iteration (`vllm_rollout_with_tools.py:
    911-1036`), both engines' loops: the waiting rows in order (their ΔH in `deltas`), each makes up
    to beam_size − 1 copies, one draw U per copy, while the prompt has `room`; every decision reads
    the c of the iteration before. Returns (the row of each copy, every decision as (row, ΔH, go))."""
    forks: list[int] = []
    decisions: list[tuple[int, float, bool]] = []
    for i, delta in enumerate(deltas):
        k = fork_budget(b, room - len(forks))
        if k == 0:
            break
        for _ in range(k):
            go = branch_decision(b, delta, draw(), consecutive)
            decisions.append((i, float(delta), bool(go)))
            if go:
                forks.append(i)
    return forks, decisions


def token_entropies(logits: torch.Tensor, temperature: float, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (full entropy, top-k truncated -Σ p log p) of the sampling distribution."""
    scaled = logits.float() / max(temperature, 1e-6)
    logp = torch.log_softmax(scaled, dim=-1)
    p = logp.exp()
    full = -(p * logp).sum(-1)
    if topk and topk < logits.shape[-1]:
        top_logp, _ = logp.topk(topk, dim=-1)
        trunc = -(top_logp.exp() * top_logp).sum(-1)
    else:
        trunc = full
    return full, trunc


@dataclass(frozen=True)
class TopkEntropy:
    """What k log-probs of one position say about its entropy H = -Σ p log p.

    `truncated` = -Σ_top-k p log p is ARPO's quantity (what `token_entropies` returns as its
    second value, and what the branching rule uses); it never exceeds H, and misses the tail's
    share. The tail (mass m = 1 - Σ_top-k p over the V - k other tokens, each at most the k-th
    probability p_k) contributes between m·(-log p_k) and m·log((V - k)/m), so
    `lower` <= H <= `upper`."""

    truncated: float
    lower: float
    upper: float
    tail_mass: float


def topk_entropy(top_logprobs: Sequence[float], vocab_size: int) -> TopkEntropy:
    """The entropy estimate of one position from its top-k log-probs (a server such as vLLM
    returns these, never the whole distribution); log-probs of the full softmax, any order."""
    lp = np.asarray(sorted((float(x) for x in top_logprobs), reverse=True), dtype=np.float64)
    if lp.size == 0:
        raise ValueError("topk_entropy needs at least one log-prob")
    p = np.exp(lp)
    truncated = float(-(p * lp).sum())
    tail = float(max(0.0, 1.0 - p.sum()))
    rest = int(vocab_size) - lp.size
    if tail <= 1e-12 or rest <= 0:
        return TopkEntropy(truncated, truncated, truncated, tail)
    lower = truncated + tail * float(-lp[-1])
    upper = truncated + tail * math.log(rest / tail)
    return TopkEntropy(truncated, lower, max(lower, upper), tail)
