"""Outcome-reward advantage estimators, looked up by name like verl's `core_algos` registry.

Every estimator has one signature so the engines can call any of them:

    fn(token_level_rewards [B, T], response_mask [B, T], index [B], *,
       norm_adv_by_std_in_grpo=True, epsilon=1e-6) -> (advantages [B, T], returns [B, T])

`index` gives each sample's group (its prompt uid). The scalar score of a response is the sum of
its token rewards; the estimator turns scores into one advantage per response and broadcasts it
over the response's valid tokens. Group statistics are computed with `index_add_` (a handful of
tensor ops whatever the batch size); only string labels are factorised in Python, one dict lookup
each (tens of milliseconds for 100k responses).

Singleton groups: a response with no peer has no group baseline, so all three estimators give it
advantage 0 (before whitening, for reinforce_plus_plus_baseline). verl 0.9.1 instead uses mean 0
and std 1 for singletons, i.e. the raw score; archer deliberately does not (see docs/algorithms.md).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch

from archer.core.algorithms.aggregation import masked_whiten
from archer.errors import ConfigError

AdvEstimatorFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

ADV_ESTIMATOR_REGISTRY: dict[str, AdvEstimatorFn] = {}


def register_adv_estimator(name: str) -> Callable[[AdvEstimatorFn], AdvEstimatorFn]:
    """Register an estimator under `name`; registering a different function twice is a bug."""

    def decorator(fn: AdvEstimatorFn) -> AdvEstimatorFn:
        existing = ADV_ESTIMATOR_REGISTRY.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered to {existing.__qualname__}")
        ADV_ESTIMATOR_REGISTRY[name] = fn
        return fn

    return decorator


def get_adv_estimator(name: str) -> AdvEstimatorFn:
    """The estimator registered as `name`; an unknown name is a config error that lists the known ones."""
    try:
        return ADV_ESTIMATOR_REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(ADV_ESTIMATOR_REGISTRY))
        raise ConfigError(
            f"unknown advantage estimator {name!r}; known: {known}",
            hint="set algorithm.adv_estimator to one of them",
        ) from None


def group_index(
    index: Sequence[Hashable], device: torch.device | str | None = None
) -> tuple[torch.Tensor, int]:
    """Map arbitrary hashable group labels to contiguous ids 0..G-1; returns (ids [B], G)."""
    if isinstance(index, torch.Tensor) and not index.is_floating_point():
        _, inverse = torch.unique(index.reshape(-1), return_inverse=True)
        ids = inverse
    elif isinstance(index, np.ndarray) and index.dtype != object and np.issubdtype(index.dtype, np.integer):
        _, inverse = np.unique(index.reshape(-1), return_inverse=True)
        ids = torch.from_numpy(inverse.astype(np.int64))
    else:
        # Labels are usually uuid strings: a dict lookup per label is the cheapest exact factorisation.
        seen: dict[Hashable, int] = {}
        items = index.tolist() if hasattr(index, "tolist") else list(index)
        ids = torch.tensor([seen.setdefault(k, len(seen)) for k in items], dtype=torch.long)
    ids = ids.to(device=device)
    num_groups = int(ids.max().item()) + 1 if ids.numel() else 0
    return ids, num_groups


def group_stats(
    scores: torch.Tensor, ids: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (group count, group mean, unbiased group std); std is 0 for singleton groups."""
    counts = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device)
    counts.index_add_(0, ids, torch.ones_like(scores))
    sums = torch.zeros_like(counts).index_add_(0, ids, scores)
    mean = sums / counts
    centred = scores - mean[ids]
    sq = torch.zeros_like(counts).index_add_(0, ids, centred * centred)
    std = torch.sqrt(sq / torch.clamp(counts - 1, min=1))
    return counts[ids], mean[ids], std[ids]


def _scores_and_groups(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence[Hashable]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if token_level_rewards.dim() != 2 or token_level_rewards.shape != response_mask.shape:
        raise ValueError(
            f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must both be [B, T]"
        )
    batch = token_level_rewards.shape[0]
    if len(index) != batch:
        raise ValueError(f"index has {len(index)} labels for a batch of {batch} responses")
    scores = token_level_rewards.sum(dim=-1)
    ids, num_groups = group_index(index, device=scores.device)
    counts, mean, std = group_stats(scores, ids, num_groups)
    return scores, counts, mean, std


def _broadcast(scalars: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    adv = scalars.unsqueeze(-1) * response_mask.to(scalars.dtype)
    return adv, adv


@register_adv_estimator("grpo")
@torch.no_grad()
def grpo(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Hashable],
    *,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: A_i = (r_i - mean_g) / (std_g + eps), or r_i - mean_g (Dr. GRPO) without std scaling.

    std is the unbiased (n-1) group std, as in verl; a group whose scores are all equal gets 0.
    """
    scores, counts, mean, std = _scores_and_groups(token_level_rewards, response_mask, index)
    centred = scores - mean  # exactly 0 for singletons
    scalars = centred / (std + epsilon) if norm_adv_by_std_in_grpo else centred
    return _broadcast(scalars, response_mask)


@register_adv_estimator("rloo")
@torch.no_grad()
def rloo(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Hashable],
    *,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO: A_i = r_i - mean of the other n-1 scores = n/(n-1) * (r_i - mean_g).

    The two keyword arguments are accepted for the shared signature and ignored.
    """
    scores, counts, mean, _ = _scores_and_groups(token_level_rewards, response_mask, index)
    scalars = (scores - mean) * counts / torch.clamp(counts - 1, min=1)
    return _broadcast(scalars, response_mask)


@register_adv_estimator("reinforce_plus_plus_baseline")
@torch.no_grad()
def reinforce_plus_plus_baseline(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Hashable],
    *,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline: subtract the group mean, then whiten over all valid tokens of the batch.

    Whitening is token-weighted (a long response counts once per token), exactly as verl's
    `masked_whiten`: mean and unbiased var over valid tokens, then (x - mean) / sqrt(var + 1e-8).
    The two keyword arguments are accepted for the shared signature and ignored.
    """
    scores, _, mean, _ = _scores_and_groups(token_level_rewards, response_mask, index)
    mask = response_mask.to(scores.dtype)
    tokens = (scores - mean).unsqueeze(-1) * mask
    adv = masked_whiten(tokens, mask) * mask
    return adv, adv


def available_adv_estimators() -> list[str]:
    """Registered estimator names, sorted (for help texts and config checks)."""
    return sorted(ADV_ESTIMATOR_REGISTRY)
