"""Per-token log-probs and entropy from logits: the hot path of every actor forward.

Both come from one temperature-scaled log-softmax (verl divides the logits by the rollout
temperature before the log-softmax, so the trained distribution is the sampled one). Low-precision
logits are upcast to float32 for the softmax; outputs are float32 then (float64 stays float64).

For large vocabularies the [N, V] intermediates dominate memory. With `chunk_size`, the tokens are
processed `chunk_size` rows at a time by a custom autograd function whose backward recomputes the
softmax chunk by chunk from the logits, so neither pass holds more than one chunk of [chunk, V]
float32 temporaries (the gradient w.r.t. the logits is [N, V] by nature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits.to(_compute_dtype(logits.dtype))
    return z if temperature == 1.0 else z / temperature


def _dense(
    flat: torch.Tensor, labels: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    logp = F.log_softmax(_scaled(flat, temperature), dim=-1)
    token_logp = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return token_logp, None
    entropy = -(torch.exp(logp) * logp).sum(dim=-1)
    return token_logp, entropy


class _ChunkedLogProbEntropy(torch.autograd.Function):
    """log p(label) and entropy per row of [N, V] logits, chunked in forward and backward.

    Gradients (z = logits / T, p = softmax(z)):
      d log p_y / d z = onehot(y) - p
      d H / d z      = -p * (log p + H)
    each divided by T for the raw logits.
    """

    @staticmethod
    def forward(ctx, flat, labels, temperature, with_entropy, chunk_size):  # type: ignore[override]
        n = flat.shape[0]
        out_dtype = _compute_dtype(flat.dtype)
        token_logp = torch.empty(n, dtype=out_dtype, device=flat.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=out_dtype, device=flat.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            logp = F.log_softmax(_scaled(flat[start:stop], temperature), dim=-1)
            token_logp[start:stop] = logp.gather(-1, labels[start:stop].unsqueeze(-1)).squeeze(-1)
            if with_entropy:
                entropy[start:stop] = -(torch.exp(logp) * logp).sum(dim=-1)
        ctx.save_for_backward(flat, labels, entropy)
        ctx.temperature = temperature
        ctx.with_entropy = with_entropy
        ctx.chunk_size = chunk_size
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return token_logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):  # type: ignore[override]
        flat, labels, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        grad = torch.empty_like(flat)
        n = flat.shape[0]
        use_entropy = ctx.with_entropy and grad_entropy is not None
        for start in range(0, n, ctx.chunk_size):
            stop = min(start + ctx.chunk_size, n)
            logp = F.log_softmax(_scaled(flat[start:stop], ctx.temperature), dim=-1)
            p = torch.exp(logp)
            g_lp = grad_logp[start:stop].to(p.dtype).unsqueeze(-1)
            g = -p * g_lp
            g.scatter_add_(-1, labels[start:stop].unsqueeze(-1), g_lp)
            if use_entropy:
                h = entropy[start:stop].unsqueeze(-1)
                g_h = grad_entropy[start:stop].to(p.dtype).unsqueeze(-1)
                g -= g_h * p * (logp + h)
            if ctx.temperature != 1.0:
                g /= ctx.temperature
            grad[start:stop] = g.to(flat.dtype)
        return grad, None, None, None, None


def logprobs_and_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(label) [B, T] and, if asked, the entropy [B, T] of softmax(logits / temperature).

    `logits` is [..., V] and `labels` its leading shape; labels must be valid token ids everywhere
    (pad positions hold any real id and are masked later). Gradients flow through both outputs.
    `chunk_size` bounds the number of token rows processed at once (None: all at once).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    lead = labels.shape
    flat = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1).long()
    if chunk_size is None or flat.shape[0] <= chunk_size:
        token_logp, entropy = _dense(flat, flat_labels, float(temperature), with_entropy)
    else:
        token_logp, entropy = _ChunkedLogProbEntropy.apply(
            flat, flat_labels, float(temperature), with_entropy, int(chunk_size)
        )
        if not with_entropy:
            entropy = None
    return token_logp.reshape(lead), (entropy.reshape(lead) if entropy is not None else None)


def logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log pi(label) only (skips the entropy reduction)."""
    token_logp, _ = logprobs_and_entropy(
        logits, labels, temperature=temperature, with_entropy=False, chunk_size=chunk_size
    )
    return token_logp


def entropy_from_logits(
    logits: torch.Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) over the last dimension, shape logits.shape[:-1]."""
    labels = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    _, entropy = logprobs_and_entropy(
        logits, labels, temperature=temperature, with_entropy=True, chunk_size=chunk_size
    )
    assert entropy is not None
    return entropy
