"""Masked reductions and `agg_loss`: how a [B, T] matrix of token losses becomes one number.

The modes and their defaults follow verl 0.9.1's `core_algos.agg_loss(..., dp_size=1)`. The two
optional denominators exist for gradient accumulation: a mini-batch split into micro-batches gives
exactly the mini-batch loss when every micro-batch divides by the mini-batch's totals instead of
its own (see `agg_loss`).
"""

from __future__ import annotations

import torch

from archer.errors import ConfigError

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")

Number = int | float | torch.Tensor


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values * mask`; NaN/inf outside the mask (padding) cannot leak into the result."""
    mask_f = mask.to(values.dtype)
    kept = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    prod = kept * mask_f
    return prod.sum() if dim is None else prod.sum(dim=dim)


def _nonzero(denom: torch.Tensor) -> torch.Tensor:
    # An all-masked reduction has a zero numerator too; dividing by 1 returns 0 instead of NaN.
    return torch.where(denom > 0, denom, torch.ones_like(denom))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over masked entries; 0 (not NaN) when nothing is selected."""
    mask_f = mask.to(values.dtype)
    count = mask_f.sum() if dim is None else mask_f.sum(dim=dim)
    return masked_sum(values, mask_f, dim) / _nonzero(count)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with mean and unbiased var over the masked entries (verl's formula).

    With fewer than two valid entries the variance is undefined; verl raises, we treat it as 0
    so that the result is 0 for the lone entry instead of failing a training step.
    """
    mask_f = mask.to(values.dtype)
    mean = masked_mean(values, mask_f)
    var = masked_mean((values - mean) ** 2, mask_f)
    n = mask_f.sum()
    bessel = torch.where(n > 1, n / torch.clamp(n - 1, min=1), torch.ones_like(n))
    return (values - mean) * torch.rsqrt(var * bessel + eps)


def _as_denominator(value: Number, name: str, like: torch.Tensor) -> torch.Tensor:
    # 0 is legal (a mini-batch with no valid token): its numerator is 0 too, so the loss is 0.
    if not isinstance(value, torch.Tensor) and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return _nonzero(torch.as_tensor(value, device=like.device, dtype=like.dtype))


def agg_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str,
    *,
    batch_num_tokens: Number | None = None,
    global_batch_size: Number | None = None,
) -> torch.Tensor:
    """Aggregate token losses [B, T] into a scalar.

    - token-mean:          sum(L * m) / N_tokens
    - seq-mean-token-sum:  sum_i sum_t(L_it * m_it) / N_seqs
    - seq-mean-token-mean: sum_i [sum_t(L_it * m_it) / sum_t m_it] / N_seqs

    N_tokens defaults to this batch's valid tokens and N_seqs to its sequences with at least one
    valid token (fully masked rows never count). For gradient accumulation pass the *mini-batch*
    totals: `batch_num_tokens` (token-mean) or `global_batch_size` (seq-mean-*, counting non-empty
    sequences); the micro-batch losses then sum to the mini-batch loss exactly.
    """
    mask_f = loss_mask.to(loss_mat.dtype)
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            denom = _nonzero(mask_f.sum())
        else:
            denom = _as_denominator(batch_num_tokens, "batch_num_tokens", loss_mat)
        return masked_sum(loss_mat, mask_f) / denom

    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        seq_tokens = mask_f.sum(dim=-1)
        seq_losses = masked_sum(loss_mat, mask_f, dim=-1)
        if loss_agg_mode == "seq-mean-token-mean":
            seq_losses = seq_losses / _nonzero(seq_tokens)
        seq_valid = (seq_tokens > 0).to(loss_mat.dtype)
        if global_batch_size is None:
            denom = _nonzero(seq_valid.sum())
        else:
            denom = _as_denominator(global_batch_size, "global_batch_size", loss_mat)
        return (seq_losses * seq_valid).sum() / denom

    raise ConfigError(
        f"unknown loss_agg_mode {loss_agg_mode!r}; known: {', '.join(LOSS_AGG_MODES)}",
        hint="set actor.loss_agg_mode to one of them",
    )
