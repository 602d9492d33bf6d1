"""The PPO update of the local engine: epochs x mini-batches x micro-batches with gradient
accumulation, global loss normalisation and grad clipping.

Loss normalisation is global per mini-batch (the token count or sequence count of the whole
mini-batch is passed to every micro-batch's aggregation), so the sum of micro-batch losses is
exactly the mini-batch loss whatever the micro-batch size: results, and influence scores, do
not depend on how a batch is split.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from archer.core.algorithms import PolicyLossConfig, agg_loss, get_policy_loss, kl_penalty, loss_needs_entropy
from archer.core.engines.local.forward import make_micro_batch, response_logprobs


@dataclass
class UpdateBatch:
    """What the update needs besides the rollout itself, all [B, R] on CPU."""

    rollout: Any
    old_log_prob: torch.Tensor | None  # None: on-policy, one optimizer step (see ppo_update)
    advantages: torch.Tensor
    ref_log_prob: torch.Tensor | None = None
    # Per-token loss weights [B, R] (1 = as trained). The loss normalisers (mini-batch token and
    # sequence counts) stay those of the unweighted batch, so a 0 removes exactly that token's
    # loss terms (policy, KL, entropy) and nothing else: `archer influence check` re-runs a step
    # with token sets removed this way.
    loss_weight: torch.Tensor | None = None


# A hook the influence tracer uses: micro_hook("begin", epoch, micro_batch, loss_normaliser) right
# before each micro-batch forward and micro_hook("end", ...) after its backward. The normaliser is
# what the aggregation divided by (mini-batch tokens for token-mean, sequences for seq-mean-*).
MicroHook = Callable[[str, int, Any, float], None]


def ppo_update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: UpdateBatch,
    actor_cfg: Any,
    *,
    group_size: int,
    temperature: float,
    device: torch.device | str,
    micro_hook: MicroHook | None = None,
) -> tuple[dict[str, float], torch.Tensor | None]:
    """Run the configured PPO epochs over the batch; returns (averaged actor metrics, entropy).

    With `batch.old_log_prob=None` the update is on-policy: exactly one optimizer step over the
    whole batch (one epoch, one mini-batch), so the old log-probs are the current ones, detached,
    and the per-token entropy of the rollout policy comes out of the same forward — no separate
    log-prob pass (TRL does the same with num_iterations=1). The returned entropy [B, R] is then
    that entropy; otherwise it is None."""
    loss_fn = get_policy_loss(actor_cfg.policy_loss)
    loss_cfg = PolicyLossConfig.from_actor(actor_cfg)
    mode = actor_cfg.loss_agg_mode
    on_policy = batch.old_log_prob is None
    needs_entropy = on_policy or actor_cfg.entropy_coeff > 0 or loss_needs_entropy(actor_cfg.policy_loss)
    use_kl = bool(actor_cfg.use_kl_loss) and batch.ref_log_prob is not None
    B = batch.rollout.size
    mini = actor_cfg.ppo_mini_batch_size * group_size
    entropy_out = None
    if on_policy:
        if actor_cfg.ppo_epochs != 1 or mini < B:
            raise ValueError("an on-policy update (no old log-probs) must be one epoch of one mini-batch")
        entropy_out = torch.zeros(batch.rollout.response_ids.shape, dtype=torch.float32)
    micro = actor_cfg.ppo_micro_batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    # Per mini-batch values: losses are already normalised by mini-batch totals, so summing the
    # micro-batch values gives the mini-batch value; token metrics are weighted by token share.
    totals: dict[str, float] = defaultdict(float)
    n_mini = 0
    skipped = 0

    model.train()
    for epoch in range(actor_cfg.ppo_epochs):
        for start in range(0, B, mini):
            mini_rows = torch.arange(start, min(B, start + mini))
            n_tokens = int(batch.rollout.train_mask[mini_rows].sum())
            n_seqs = int(mini_rows.numel())
            optimizer.zero_grad(set_to_none=True)
            for mstart in range(0, n_seqs, micro):
                rows = mini_rows[mstart : mstart + micro]
                mb = make_micro_batch(batch.rollout, rows, device)
                w = mb.response_width
                normaliser = float(n_tokens if mode == "token-mean" else n_seqs)
                if micro_hook is not None:
                    micro_hook("begin", epoch, mb, normaliser)
                logp, ent = response_logprobs(model, mb, temperature=temperature, with_entropy=needs_entropy)
                mask = batch.rollout.train_mask[rows, :w].to(device).float()
                if batch.loss_weight is not None:
                    mask = mask * batch.loss_weight[rows, :w].to(device, mask.dtype)
                if on_policy:  # traced entropy covers every real token, tool results included
                    old = logp.detach()
                    real = batch.rollout.response_mask[rows, :w].to(device).float()
                    entropy_out[rows, :w] = (ent.detach().float() * real).cpu()
                else:
                    old = batch.old_log_prob[rows, :w].to(device)
                adv = batch.advantages[rows, :w].to(device)
                out = loss_fn(
                    old,
                    logp,
                    adv,
                    mask,
                    loss_agg_mode=mode,
                    config=loss_cfg,
                    entropy=ent.detach() if ent is not None else None,
                    batch_num_tokens=n_tokens,
                    global_batch_size=n_seqs,
                )
                loss = out.loss
                totals["actor/pg_loss"] += float(out.loss.detach())
                if use_kl:
                    ref = batch.ref_log_prob[rows, :w].to(device)
                    kl = kl_penalty(logp, ref, actor_cfg.kl_loss_type)
                    if out.kl_token_scale is not None:
                        kl = kl * out.kl_token_scale
                    kl_loss = agg_loss(kl, mask, mode, batch_num_tokens=n_tokens, global_batch_size=n_seqs)
                    loss = loss + actor_cfg.kl_loss_coef * kl_loss
                    totals["actor/kl_loss"] += float(kl_loss.detach())
                if actor_cfg.entropy_coeff > 0 and ent is not None:
                    ent_loss = agg_loss(ent, mask, mode, batch_num_tokens=n_tokens, global_batch_size=n_seqs)
                    loss = loss - actor_cfg.entropy_coeff * ent_loss
                loss.backward()
                if micro_hook is not None:
                    micro_hook("end", epoch, mb, normaliser)
                share = float(mask.sum()) / max(1, n_tokens)
                for k, v in out.metrics.items():
                    totals[f"actor/{k}"] += float(v) * share
                if ent is not None:
                    totals["actor/entropy"] += float((ent.detach() * mask).sum()) / max(1, n_tokens)
            max_norm = actor_cfg.optim.grad_clip if actor_cfg.optim.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:
                skipped += 1
            if scheduler is not None:
                scheduler.step()
            totals["actor/grad_norm"] += float(grad_norm) if torch.isfinite(grad_norm) else 0.0
            n_mini += 1
    metrics = {k: v / max(1, n_mini) for k, v in totals.items()}
    metrics["actor/skipped_steps"] = float(skipped)
    metrics["actor/optimizer_steps"] = float(n_mini)
    metrics["actor/on_policy"] = float(on_policy)
    metrics["actor/lr"] = float(optimizer.param_groups[0]["lr"])
    return metrics, entropy_out
