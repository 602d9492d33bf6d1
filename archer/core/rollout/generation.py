"""Generation with Hugging Face `generate`: n samples per prompt, as a `Rollout`.

Dynamic KV cache by default; `compile_decode` decodes with a static KV cache and a compiled
forward (CUDA graphs on a GPU). Used by the local engine, validation and `archer eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from archer.core.rollout.batch import Rollout, cut_at_eos, left_pad, right_pad


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
