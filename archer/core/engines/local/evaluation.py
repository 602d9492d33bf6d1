"""Validation of the local engine: sample the validation prompts, grade, report accuracy.

It runs on the same sampling, grading and metrics code as `archer eval`
(`archer.core.evaluation`), so in-training numbers and offline ones are computed alike; unlike
`archer eval` it keeps nothing on disk and leaves the global RNG to the training run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from archer.core.evaluation.results import summarize
from archer.core.evaluation.runner import sample_and_grade
from archer.core.evaluation.samplers import LocalSampler


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
    if not prompts:
        return {}
    sampler = LocalSampler(model, tokenizer, device=device)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        graded = sample_and_grade(
            sampler,
            [p.ids for p in chunk],
            [p.answer for p in chunk],
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            reward_fn=reward_fn,
            timeout_s=timeout_s,
        )
        for g, samples in enumerate(graded):
            rows += [
                {
                    "problem": start + g,
                    "data_source": chunk[g].data_source,
                    "correct": bool(s.correct),
                    "reward": float(s.reward),
                    "response_length": len(c.token_ids),
                    "truncated": c.truncated,
                }
                for c, s in samples
            ]
    stats = summarize(rows, n=n, ks=[n] if n > 1 else [])["all"]
    out = {
        "val/accuracy": stats[f"avg@{n}"],
        "val/reward_mean": stats["reward_mean"],
        "val/response_length": stats["response_length_mean"],
        "val/prompts": float(len(prompts)),
    }
    if n > 1:
        out[f"val/pass@{n}"] = stats[f"pass@{n}"]
    return out
