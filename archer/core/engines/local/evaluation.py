"""Validation of the local engine: sample the validation prompts, grade, report accuracy."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from archer.core.engines.local.rollout import decode_responses, generate


def evaluate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    reward_fn: str,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    timeout_s: float,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """val/accuracy (mean over all samples, i.e. avg@n), val/pass@n, val/reward_mean, val/response_length."""
    from archer.core.rewards import score_batch

    if not prompts:
        return {}
    correct_all, rewards, lengths, any_correct = [], [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ro = generate(
            model, tokenizer, [p.ids for p in chunk], n=n, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, device=device,
        )
        texts = decode_responses(tokenizer, ro)
        answers = [chunk[g].answer for g in ro.group]
        scores = score_batch(reward_fn, texts, answers, timeout_s=timeout_s)
        correct = [bool(s.correct) for s in scores]
        correct_all += correct
        rewards += [float(s.reward) for s in scores]
        lengths += ro.response_lengths.tolist()
        for g in range(len(chunk)):
            any_correct.append(any(correct[g * n:(g + 1) * n]))
    out = {
        "val/accuracy": sum(correct_all) / len(correct_all),
        "val/reward_mean": sum(rewards) / len(rewards),
        "val/response_length": sum(lengths) / len(lengths),
        "val/prompts": float(len(prompts)),
    }
    if n > 1:
        out[f"val/pass@{n}"] = sum(any_correct) / len(any_correct)
    return out
