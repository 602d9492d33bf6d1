"""Rollouts with Hugging Face `generate`: n samples per prompt, left-padded prompts,
right-padded responses cut at the first EOS (the EOS token itself is part of the response and
carries loss, as in verl)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Rollout:
    """One batch of sampled responses. Rows are ordered prompt-major: the n samples of a prompt
    are consecutive (row = group * n + sample)."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right-padded with pad id
    response_mask: torch.Tensor  # [B, R] 1 for real response tokens (including the EOS)
    truncated: torch.Tensor  # [B] bool: hit max_new_tokens without an EOS
    group: list[int]  # [B] index of the prompt within the batch
    sample: list[int]  # [B] index of the sample within its group
    # [B, R] tokens that carry loss; None means response_mask. Agent rollouts set it to 0 on
    # tool-result tokens, which the model must attend to (response_mask) but not be trained on.
    loss_mask: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    @property
    def train_mask(self) -> torch.Tensor:
        """The loss mask: `loss_mask` when set, else `response_mask`."""
        return self.response_mask if self.loss_mask is None else self.loss_mask

    def select(self, rows: Sequence[int]) -> Rollout:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return Rollout(
            prompt_ids=self.prompt_ids[idx],
            prompt_mask=self.prompt_mask[idx],
            response_ids=self.response_ids[idx],
            response_mask=self.response_mask[idx],
            truncated=self.truncated[idx],
            group=[self.group[i] for i in rows],
            sample=[self.sample[i] for i in rows],
            loss_mask=None if self.loss_mask is None else self.loss_mask[idx],
        )


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(rows: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    width = max(int(r.shape[0]) for r in rows) if rows else 0
    out = torch.full((len(rows), max(width, 1)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def cut_at_eos(tokens: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Response mask (1 up to and including the first EOS) and the truncated flag per row."""
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    # positions strictly after the first EOS: the cumulative count of EOS *before* them is > 0
    seen_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    mask = (seen_before == 0).long()
    truncated = ~is_eos.any(dim=-1)
    return mask, truncated


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return [int(i) for i in ids if i is not None]


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 0,
    device: torch.device | str = "cpu",
    compile_decode: bool = False,
    pad_prompts_to: int = 0,
) -> Rollout:
    """Sample `n` responses for every prompt (temperature 0 means greedy).

    `compile_decode` decodes with a static KV cache and a compiled forward (on a GPU, CUDA graphs:
    the per-token kernel launches of a small model collapse into one replay). Prompts are then
    left-padded to `pad_prompts_to` so every call has the same shapes and compiles once."""
    pad_id = int(tokenizer.pad_token_id)
    eos_ids = eos_token_ids(model, tokenizer)
    rows = [p for p in prompts for _ in range(n)]
    group = [g for g in range(len(prompts)) for _ in range(n)]
    sample = [s for _ in range(len(prompts)) for s in range(n)]
    prompt_ids, prompt_mask = left_pad(rows, pad_id)
    if compile_decode and pad_prompts_to > prompt_ids.shape[1]:
        extra = pad_prompts_to - prompt_ids.shape[1]
        prompt_ids = torch.nn.functional.pad(prompt_ids, (extra, 0), value=pad_id)
        prompt_mask = torch.nn.functional.pad(prompt_mask, (extra, 0), value=0)
    step = batch_size if batch_size > 0 else len(rows)
    do_sample = temperature > 0
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        use_cache=True,
    )
    if do_sample:
        kwargs.update(
            temperature=float(temperature), top_p=float(top_p), top_k=int(top_k) if top_k > 0 else 0
        )
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if compile_decode:
        from transformers.generation import CompileConfig

        compile_cfg = CompileConfig(fullgraph=True, dynamic=False)
        compile_cfg._compile_all_devices = True  # also on CPU when asked for explicitly
        kwargs.update(cache_implementation="static", compile_config=compile_cfg)
    was_training = model.training
    model.eval()
    responses: list[torch.Tensor] = []
    try:
        for start in range(0, len(rows), step):
            ids = prompt_ids[start : start + step].to(device)
            mask = prompt_mask[start : start + step].to(device)
            if not compile_decode:  # drop columns that are padding in every row of this chunk
                keep = int(mask.sum(0).nonzero().min()) if mask.any() else 0
                ids, mask = ids[:, keep:], mask[:, keep:]
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            gen = out[:, ids.shape[1] :].cpu()
            responses.extend(gen[i] for i in range(gen.shape[0]))
    finally:
        model.train(was_training)
    response_ids = right_pad(responses, pad_id)
    if response_ids.shape[1] == 0:
        response_ids = torch.full((len(rows), 1), pad_id, dtype=torch.long)
    response_mask, truncated = cut_at_eos(response_ids, eos_ids)
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad_id))
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, truncated, group, sample)


def decode_responses(tokenizer: Any, rollout: Rollout) -> list[str]:
    """Response texts without the EOS and padding."""
    lengths = rollout.response_lengths.tolist()
    texts = []
    for i, L in enumerate(lengths):
        ids = rollout.response_ids[i, : int(L)].tolist()
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts
