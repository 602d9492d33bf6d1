"""The run summary's verdict: held-out accuracy decides whether a run learned the task."""

from __future__ import annotations

from archer.core.outcome import Outcome, outcome_of


def test_outcome_of_averages_the_first_and_last_steps_and_reads_validation():
    rows = [{"step": 0, "val/accuracy": 0.3}] + [{"step": s, "reward/mean": s / 10} for s in range(1, 11)]
    o = outcome_of(rows, {"val/accuracy": 0.3}, {"val/accuracy": 0.5}, k=3)
    assert o.reward_steps == 3
    assert abs(o.reward_first - 0.2) < 1e-9 and abs(o.reward_last - 0.9) < 1e-9
    assert abs(o.reward_gain - 0.7) < 1e-9 and abs(o.val_gain - 0.2) < 1e-9
    short = outcome_of(rows[:3], {}, {}, k=5)  # two training steps, no validation
    assert short.reward_steps == 2 and short.val_gain is None and short.verdict() is None


def test_verdict_says_learned_memorised_or_unchanged():
    learned = Outcome(0.4, 0.7, 5, 0.43, 0.71)
    assert learned.verdict() == (
        "held-out accuracy 0.43 → 0.71: the model learned the task, not just the training set"
    )
    assert not learned.val_fell
    memorised = Outcome(0.42, 0.64, 5, 0.43, 0.37)
    assert memorised.val_fell and "memorised its training problems" in memorised.verdict()
    worse = Outcome(0.5, 0.4, 5, 0.43, 0.37)
    assert worse.val_fell and "got worse" in worse.verdict()
    flat = Outcome(0.5, 0.6, 5, 0.43, 0.44)
    assert not flat.val_fell and "no measurable change" in flat.verdict()
