"""Text rules the graders share."""

from __future__ import annotations

THINK_CLOSE = "</think>"


def final_text(response: str) -> str:
    """What a reasoning model answers with: the text after `</think>` when the response has one
    (Archer2.0's graders split there, so a tentative `\\boxed{}` or code block inside the thinking
    is never graded), else the whole response (no thinking, or thinking cut off by the length
    limit)."""
    cut = response.find(THINK_CLOSE)
    return response if cut < 0 else response[cut + len(THINK_CLOSE) :]
