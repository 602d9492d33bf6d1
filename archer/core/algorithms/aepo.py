"""AEPO's policy-update pieces (arXiv 2510.14545, as released in the ARPO repository's AEPO/ code).

- `aepo` policy loss: entropy-balanced clipping. For A > 0 the upper clip keeps its gradient:
  the clipped term is (1 + ε_h)·r/sg(r), whose value is the clip bound but whose gradient is
  (1 + ε_h)·∇log π (GPPO-style), so a clipped positive token still gets -A(1+ε_h)∇log π instead
  of 0. A < 0 tokens get vanilla PPO clipping and the dual clip. As released, this applies to every
  token: despite the name there is no entropy gate.
- entropy-aware advantage: Ã = A·(1 + α·z(H)), H the current policy's per-token entropy z-scored
  over the micro-batch's valid tokens, detached. The released scripts had it silently off (entropy
  was only computed when entropy_coeff != 0); here `actor.aepo_entropy_advantage = α > 0` turns it
  on and the loss declares that it needs entropy, so the engines always compute it.
"""

from __future__ import annotations

import torch

from archer.core.algorithms.aggregation import Number, agg_loss, masked_mean
from archer.core.algorithms.policy_losses import (
    PolicyLossConfig,
    PolicyLossOutput,
    _frac,
    _log_ratio,
    register_policy_loss,
)


def entropy_aware_advantages(
    advantages: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, alpha: float, eps: float = 1e-6
) -> torch.Tensor:
    """A·(1 + α·z(H)) with z over the valid tokens (population std, as AEPO); masked tokens unchanged."""
    if alpha == 0:
        return advantages
    h = entropy.detach().float()
    valid = mask.bool()
    n = valid.sum()
    if n < 2:
        return advantages
    mean = h[valid].mean()
    std = h[valid].std(unbiased=False)
    z = torch.where(valid, (h - mean) / (std + eps), torch.zeros_like(h))
    return advantages * (1.0 + alpha * z).to(advantages.dtype)


@register_policy_loss("aepo", needs_entropy=True)
def aepo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    loss_agg_mode: str = "token-mean",
    config: PolicyLossConfig,
    entropy: torch.Tensor | None = None,
    batch_num_tokens: Number | None = None,
    global_batch_size: Number | None = None,
) -> PolicyLossOutput:
    """Entropy-balanced clipping (+ the entropy-aware advantage when α > 0); see the module doc.

    Per token, r = π/π_old, ε_l/ε_h = clip_ratio_low/high, c = clip_ratio_c:
      A >= 0: L = -A·min(r, (1+ε_h)·r/sg(r))      (value: -A·min(r, 1+ε_h); gradient never 0)
      A <  0: L = min(max(-A·r, -A·clip(r, 1-ε_l, 1+ε_h)), -A·c)   (vanilla with dual clip)
    """
    alpha = float(getattr(config, "aepo_entropy_advantage", 0.0))
    metrics = {}
    if alpha != 0:
        if entropy is None:
            raise ValueError(
                "actor.aepo_entropy_advantage > 0 needs the per-token entropy; the engine must pass it"
            )
        advantages = entropy_aware_advantages(advantages, entropy, response_mask, alpha)
    log_ratio = _log_ratio(old_log_prob, log_prob)
    ratio = torch.exp(log_ratio)
    eps_l, eps_h, c = config.clip_ratio_low, config.clip_ratio_high, config.clip_ratio_c

    bound = (1.0 + eps_h) * ratio / ratio.detach()  # value 1+ε_h, gradient (1+ε_h)·∇log π
    pos_losses = -advantages * torch.minimum(ratio, bound)

    neg1 = -advantages * ratio
    neg2 = -advantages * torch.clamp(ratio, 1.0 - eps_l, 1.0 + eps_h)
    neg_losses = torch.minimum(torch.maximum(neg1, neg2), -advantages * c)

    negative = advantages < 0
    pg_losses = torch.where(negative, neg_losses, pos_losses)
    loss = agg_loss(
        pg_losses,
        response_mask,
        loss_agg_mode,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
    )
    positive = advantages > 0
    clipped_pos = positive & (ratio > 1.0 + eps_h)
    clipped_neg = negative & (neg2 > neg1)
    dual = negative & (torch.maximum(neg1, neg2) > -advantages * c)
    metrics.update(
        {
            "pg_clipfrac": _frac(clipped_pos | clipped_neg, response_mask),
            "pg_clipfrac_lower": _frac(dual, response_mask),
            "pg_clipfrac_kept_grad": _frac(clipped_pos, response_mask),
            "ppo_kl": masked_mean(-log_ratio, response_mask).item(),
        }
    )
    return PolicyLossOutput(loss=loss, metrics=metrics, kl_token_scale=None)
