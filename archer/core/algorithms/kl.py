"""Per-token KL(policy || reference) estimators from sampled-token log-probs (Schulman, "Approximating
KL divergence", 2020), with verl 0.9.1's names and clamping."""

from __future__ import annotations

import torch

from archer.errors import ConfigError

KL_TYPES = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")


def kl_penalty(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kl_type: str) -> torch.Tensor:
    """Token-level KL estimate [B, T] with d = log_prob - ref_log_prob.

    - k1 / kl:         d                      (unbiased, high variance, can be negative)
    - abs:             |d|
    - k2 / mse:        d^2 / 2
    - k3 / low_var_kl: exp(-d) + d - 1        (unbiased, >= 0); -d is clamped to [-20, 20] before
      exp and the result to [-10, 10], as verl does, so one wild token cannot blow up the loss.
    """
    if kl_type in ("k1", "kl"):
        return log_prob - ref_log_prob
    if kl_type == "abs":
        return (log_prob - ref_log_prob).abs()
    if kl_type in ("k2", "mse"):
        return 0.5 * (log_prob - ref_log_prob).square()
    if kl_type in ("k3", "low_var_kl"):
        neg_d = torch.clamp(ref_log_prob - log_prob, min=-20.0, max=20.0)
        return torch.clamp(torch.exp(neg_d) - neg_d - 1.0, min=-10.0, max=10.0)
    raise ConfigError(
        f"unknown KL type {kl_type!r}; known: {', '.join(KL_TYPES)}",
        hint="set actor.kl_loss_type to one of them",
    )
