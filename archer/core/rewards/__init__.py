"""Reward functions by name: each grades one response against a ground truth and returns a `Score`.

The engines call `score_batch` once per step with every response of the step, so the registry
also owns the batch path: cheap string checks in the caller, expensive grading (math-verify) in
worker processes with a timeout that works from any thread (see `_pool`), programs (`code`) in
archer's sandbox, one process per unit test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from archer.errors import UsageError

REWARD_FUNCTIONS = ("arithmetic", "chain", "math", "code")


@dataclass
class Score:
    """One graded response: `reward` feeds the advantage, the rest explains it."""

    reward: float
    correct: bool
    extracted: str | None
    error: str | None = None


def _check_name(name: str) -> None:
    if name not in REWARD_FUNCTIONS:
        raise UsageError(
            f"unknown reward function {name!r}; known: {', '.join(REWARD_FUNCTIONS)}",
            hint="set reward.function to one of: " + ", ".join(REWARD_FUNCTIONS),
        )


def get_reward_fn(name: str) -> Callable[[str, str], Score]:
    """`fn(response, ground_truth) -> Score` for a reward function name."""
    _check_name(name)
    if name == "arithmetic":
        from archer.core.rewards.arithmetic import score_arithmetic

        return score_arithmetic
    if name == "chain":
        from archer.core.rewards.chain import score_chain

        return score_chain
    if name == "code":
        from archer.core.rewards.code import score_code

        return score_code
    from archer.core.rewards.math import score_math

    return score_math


def score_batch(
    name: str,
    responses: list[str],
    ground_truths: list[str],
    *,
    timeout_s: float = 5.0,
    max_workers: int | None = None,
) -> list[Score]:
    """Grade `responses[i]` against `ground_truths[i]`; safe to call from any thread.

    `timeout_s` bounds each expensive grade (math) or each unit-test run (code); `max_workers`
    caps the grading processes this call uses (default: the CPU count, at most 8).
    """
    _check_name(name)
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    if name == "arithmetic":
        from archer.core.rewards.arithmetic import score_arithmetic

        return [score_arithmetic(r, g) for r, g in zip(responses, ground_truths)]
    if name == "chain":
        from archer.core.rewards.chain import score_chain

        return [score_chain(r, g) for r, g in zip(responses, ground_truths)]
    if name == "code":
        from archer.core.rewards.code import score_code_batch

        return score_code_batch(responses, ground_truths, timeout_s=timeout_s, max_workers=max_workers)
    from archer.core.rewards.math import score_math_batch

    return score_math_batch(responses, ground_truths, timeout_s=timeout_s, max_workers=max_workers)


__all__ = ["REWARD_FUNCTIONS", "Score", "get_reward_fn", "score_batch"]
