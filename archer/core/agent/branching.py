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

AEPO: `(U + β·ΔH)·max(0, 1 - penalty·c) >= α`, c = consecutive branching decisions of the prompt;
and a dynamic number of global rollouts m = clip(int(n·σ(0.5·(H_root - H̄_tool))) + 1, 1, n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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

    def __post_init__(self) -> None:
        if not 1 <= self.initial_rollouts <= self.n:
            raise ValueError(f"initial_rollouts must be in [1, n={self.n}], got {self.initial_rollouts}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")


def arpo_branches(u: float, delta_h: float, alpha: float, beta: float) -> bool:
    """ARPO's rule as coded: clip(U - β·ΔH, 0, 1) <= α."""
    return min(1.0, max(0.0, u - beta * delta_h)) <= alpha


def aepo_branches(
    u: float, delta_h: float, alpha: float, beta: float, consecutive: int, penalty: float = 0.05
) -> bool:
    """AEPO's rule as coded: (U + β·ΔH)·max(0, 1 - penalty·c) >= α."""
    return (u + beta * delta_h) * max(0.0, 1.0 - penalty * consecutive) >= alpha


def dynamic_global_rollouts(n: int, h_root: float, h_tool: float) -> int:
    """AEPO's global-rollout count (β = 0.5 as hard-coded there)."""
    m = int(n / (1.0 + math.exp(-0.5 * (h_root - h_tool)))) + 1
    return max(1, min(n, m))


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
