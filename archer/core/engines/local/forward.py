"""Policy forward passes over (prompt, response) batches: per-token log-probs and entropy of the
response tokens, computed from one forward and one log-softmax.

Token t of a response is predicted by the logits at position P-1+t of the concatenated
[left-padded prompt | right-padded response] sequence. Position ids follow the attention mask
(as `generate` does for left padding), so the forward sees exactly what generation saw.
Each micro-batch is trimmed to the columns that are not padding in all of its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from archer.core.algorithms import logprobs_and_entropy


@dataclass
class MicroBatch:
    """Model inputs of a slice of rows, trimmed, plus where the response starts."""

    rows: torch.Tensor  # [b] indices into the full batch
    input_ids: torch.Tensor  # [b, L]
    attention_mask: torch.Tensor  # [b, L]
    position_ids: torch.Tensor  # [b, L]
    prompt_width: int  # P' (response column 0 sits at input column prompt_width)
    response_width: int  # R' (columns of response kept)


def make_micro_batch(rollout: Any, rows: torch.Tensor, device: torch.device | str) -> MicroBatch:
    pm = rollout.prompt_mask[rows]
    rm = rollout.response_mask[rows]
    lead = int((pm.sum(0) > 0).nonzero().min()) if pm.any() else pm.shape[1] - 1
    resp_w = int(rm.sum(-1).max()) if rm.numel() else 1
    resp_w = max(resp_w, 1)
    ids = torch.cat([rollout.prompt_ids[rows][:, lead:], rollout.response_ids[rows][:, :resp_w]], dim=1)
    mask = torch.cat([pm[:, lead:], rm[:, :resp_w]], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return MicroBatch(
        rows=rows,
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        prompt_width=pm.shape[1] - lead,
        response_width=resp_w,
    )


def response_logprobs(
    model: Any,
    mb: MicroBatch,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [b, R'] of the response tokens (and their entropy) under `model`.

    Gradients flow when called outside `torch.no_grad()`."""
    R = mb.response_width
    out = model(
        input_ids=mb.input_ids,
        attention_mask=mb.attention_mask,
        position_ids=mb.position_ids,
        use_cache=False,
        logits_to_keep=R + 1,
    )
    logits = out.logits[:, :-1, :]  # positions P'-1 .. P'+R'-2 predict response tokens 0..R'-1
    labels = mb.input_ids[:, mb.prompt_width : mb.prompt_width + R]
    return logprobs_and_entropy(logits, labels, temperature=temperature, with_entropy=with_entropy)


@torch.no_grad()
def batch_logprobs(
    model: Any,
    rollout: Any,
    *,
    micro_batch_size: int,
    temperature: float = 1.0,
    with_entropy: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs and entropy [B, R] for a whole rollout (no grad), padded with zeros."""
    B, R = rollout.response_ids.shape
    logp = torch.zeros((B, R), dtype=torch.float32)
    ent = torch.zeros((B, R), dtype=torch.float32) if with_entropy else None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, B, micro_batch_size):
            rows = torch.arange(start, min(B, start + micro_batch_size))
            mb = make_micro_batch(rollout, rows, device)
            lp, en = response_logprobs(model, mb, temperature=temperature, with_entropy=with_entropy)
            w = mb.response_width
            logp[rows, :w] = lp.float().cpu()
            if ent is not None and en is not None:
                ent[rows, :w] = en.float().cpu()
    finally:
        model.train(was_training)
    mask = rollout.response_mask.float()
    logp *= mask
    if ent is not None:
        ent *= mask
    return logp, ent


def is_on_policy(cfg: Any, batch_size: int) -> bool:
    """One optimizer step over the whole rollout: the update's own forward gives the old log-probs
    and the entropy, so no separate log-prob pass is needed."""
    return cfg.actor.ppo_epochs == 1 and cfg.actor.ppo_mini_batch_size * cfg.rollout.n >= batch_size


def step_logprobs(
    model: Any, ref_model: Any, rollout: Any, cfg: Any, *, with_entropy: bool, device: torch.device | str
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(old log-probs, entropy, reference log-probs) a step's update needs before it runs: the old
    ones only off-policy (see `is_on_policy`), the reference ones only with a reference model."""
    kw = dict(
        micro_batch_size=int(cfg.actor.ppo_micro_batch_size),
        temperature=float(cfg.rollout.temperature),
        device=device,
    )
    old_logp = entropy = ref_logp = None
    if not is_on_policy(cfg, rollout.size):
        old_logp, entropy = batch_logprobs(model, rollout, with_entropy=with_entropy, **kw)
    if ref_model is not None:
        ref_logp, _ = batch_logprobs(ref_model, rollout, with_entropy=False, **kw)
    return old_logp, entropy, ref_logp
