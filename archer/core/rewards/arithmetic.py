"""The synthetic arithmetic reward: the first line of the response must be the exact integer.

The tiny character-level model answers `23+45=` with `68`; anything that is not an integer
literal (`7.0`, `7 apples`, empty) is wrong, so the model cannot be paid for near-misses.
"""

from __future__ import annotations

import re

from archer.core.rewards import Score

_INT = re.compile(r"[+-]?[0-9]+")
MAX_ANSWER_CHARS = 256  # far beyond any task's answer; also keeps int() under Python's digit limit


def parse_int(text: str) -> int | None:
    """`text` as an integer if it is exactly an ASCII integer literal (sign and leading zeros allowed)."""
    text = text.strip()
    return int(text) if len(text) <= MAX_ANSWER_CHARS and _INT.fullmatch(text) else None


def score_integer_answer(answer: str, ground_truth: str) -> Score:
    """1.0 when `answer` is exactly the ground-truth integer (the rule every integer task shares)."""
    gold = parse_int(str(ground_truth))
    if gold is None:
        return Score(
            0.0,
            False,
            answer[:MAX_ANSWER_CHARS] or None,
            error=f"ground truth {str(ground_truth)[:40]!r} is not an integer",
        )
    value = parse_int(answer)
    correct = value is not None and value == gold
    return Score(1.0 if correct else 0.0, correct, answer[:MAX_ANSWER_CHARS] or None)


def score_arithmetic(response: str, ground_truth: str) -> Score:
    """1.0 when the text before the first newline equals the ground-truth integer."""
    cut = response.find("\n")
    return score_integer_answer((response[:cut] if cut >= 0 else response).strip(), ground_truth)
