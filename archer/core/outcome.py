"""What a run learned, in words: training reward and held-out accuracy, first against last.

A rising training reward alone says little (a tiny model can memorise its training problems);
held-out accuracy says whether it learned the task. The CLI prints `Outcome.verdict()` at the end
of `archer train`; bench/quickstart_seeds.py and the learning tests read the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# A change of held-out accuracy smaller than this is called "about the same" whatever the number of
# validation problems: with a few hundred, sampling noise alone moves accuracy by a few hundredths.
VAL_TOLERANCE = 0.02
# With the number of problems known, a change is called real only beyond this many standard errors
# of a difference of two accuracies over n problems each (about a 95 % two-sided test).
NOISE_SIGMAS = 2.0
# a step's mean reward: the local engine's name, then verl's (its sequence score, the same number)
REWARD_KEYS = ("reward/mean", "critic/score/mean")


@dataclass(frozen=True)
class Outcome:
    """Reward (mean of the first and last k training steps) and validation accuracy before/after."""

    reward_first: float | None
    reward_last: float | None
    reward_steps: int  # k
    val_before: float | None
    val_after: float | None
    val_problems: int | None = None  # held-out problems behind each accuracy (None: not logged)

    @property
    def reward_gain(self) -> float | None:
        if self.reward_first is None or self.reward_last is None:
            return None
        return self.reward_last - self.reward_first

    @property
    def val_gain(self) -> float | None:
        if self.val_before is None or self.val_after is None:
            return None
        return self.val_after - self.val_before

    @property
    def val_noise(self) -> float:
        """The smallest change of held-out accuracy called real: VAL_TOLERANCE, or NOISE_SIGMAS
        standard errors of the difference when the number of problems is known (32 problems at
        accuracy 0.25 make ±0.22: a few validation problems cannot show a small rise)."""
        n, a, b = self.val_problems, self.val_before, self.val_after
        if not n or a is None or b is None:
            return VAL_TOLERANCE
        se = math.sqrt((a * (1 - a) + b * (1 - b)) / n)
        return max(VAL_TOLERANCE, NOISE_SIGMAS * se)

    @property
    def val_fell(self) -> bool:
        """Held-out accuracy dropped by more than noise: a warning sign."""
        gain = self.val_gain
        return gain is not None and gain < -self.val_noise

    def verdict(self) -> str | None:
        """One sentence a newcomer understands, or None without validation numbers."""
        vg, rg = self.val_gain, self.reward_gain
        if vg is None:
            return None
        acc = f"held-out accuracy {self.val_before:.3f} → {self.val_after:.3f}"
        noise = self.val_noise
        if vg > noise:
            return f"{acc}: the model learned the task, not just the training set"
        if vg < -noise:
            if rg is not None and rg > 0:
                return (
                    f"{acc} while the training reward rose: the model memorised its training "
                    "problems instead of learning the task"
                )
            return f"{acc}: the model got worse on problems it never trained on"
        if noise > VAL_TOLERANCE and abs(vg) > VAL_TOLERANCE:
            return (
                f"{acc} ({vg:+.3f}): within the noise of {self.val_problems} held-out problems "
                f"(±{noise:.2f}), so no measurable change yet"
            )
        return f"{acc}: no measurable change on problems it never trained on"


def outcome_of(
    metrics: Sequence[dict[str, Any]], first_val: dict[str, float], last_val: dict[str, float], k: int = 5
) -> Outcome:
    """The outcome of a run from its metrics rows (metrics.jsonl) and its first/last validation."""
    key = next(
        (name for name in REWARD_KEYS if any(r.get(name) is not None for r in metrics)), REWARD_KEYS[0]
    )
    rows = [r for r in metrics if r.get("step", 0) > 0 and r.get(key) is not None]
    first = last = None
    k = min(k, len(rows))
    if k:
        first = sum(float(r[key]) for r in rows[:k]) / k
        last = sum(float(r[key]) for r in rows[-k:]) / k
    problems = last_val.get("val/prompts") or first_val.get("val/prompts")
    return Outcome(
        first,
        last,
        k,
        first_val.get("val/accuracy"),
        last_val.get("val/accuracy"),
        int(problems) if problems else None,
    )
