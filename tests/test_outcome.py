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
        "held-out accuracy 0.430 → 0.710: the model learned the task, not just the training set"
    )
    assert not learned.val_fell
    memorised = Outcome(0.42, 0.64, 5, 0.43, 0.37)
    assert memorised.val_fell and "memorised its training problems" in memorised.verdict()
    worse = Outcome(0.5, 0.4, 5, 0.43, 0.37)
    assert worse.val_fell and "got worse" in worse.verdict()
    flat = Outcome(0.5, 0.6, 5, 0.43, 0.44)
    assert not flat.val_fell and "no measurable change" in flat.verdict()


def test_run_summary_prints_the_verdict_warns_on_a_fall_and_names_the_warmup_source(
    tmp_path, capsys, monkeypatch
):
    import json

    monkeypatch.setenv("COLUMNS", "300")  # one line per sentence

    from archer.cli.train import print_summary
    from archer.core.engines.local.trainer import TrainResult

    rows = [{"step": 0, "val/accuracy": 0.43}] + [
        {"step": s, "reward/mean": 0.4 + s / 100} for s in range(1, 21)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def summary(after: float, source: str) -> str:
        result = TrainResult(
            tmp_path, 10.0, 20.0, {"val/accuracy": 0.43}, {"val/accuracy": after}, None, source
        )
        print_summary(result, traced=False)
        return capsys.readouterr().out

    text = summary(0.71, "cache")
    assert "reward (mean of first 5 steps → last 5): 0.430 → 0.580 (+0.150)" in text
    assert "validation accuracy before → after: 0.430 → 0.710" in text
    assert "held-out accuracy 0.430 → 0.710: the model learned the task, not just the training set" in text
    assert "warning" not in text and "warm-up: taken from the cache" in text
    fell = summary(0.37, "trained")
    assert "warning: held-out accuracy 0.430 → 0.370 while the training reward rose" in fell
    assert "warm-up: trained in this run" in fell
    assert "warm-up:" not in summary(0.43, "off")


def test_a_change_within_the_noise_of_few_problems_is_not_called_learning():
    # 32 problems at ~0.25: two standard errors of the difference are ±0.22 (a verl GPU run's
    # 3 steps moved 0.219 -> 0.312 and the summary said "learned")
    few = Outcome(0.36, 0.36, 3, 0.219, 0.312, val_problems=32)
    assert abs(few.val_noise - 2 * ((0.219 * 0.781 + 0.312 * 0.688) / 32) ** 0.5) < 1e-12
    assert "within the noise of 32 held-out problems (±0.22)" in few.verdict()
    assert "learned" not in few.verdict() and not few.val_fell
    assert not Outcome(0.5, 0.6, 5, 0.312, 0.219, val_problems=32).val_fell  # nor a fall
    # the same change over 1,000 problems is real
    many = Outcome(0.36, 0.36, 3, 0.219, 0.312, val_problems=1000)
    assert "the model learned the task" in many.verdict()
    assert Outcome(0.5, 0.6, 5, 0.312, 0.219, val_problems=1000).val_fell
    # outcome_of reads the count the engines log with the accuracy
    o = outcome_of(
        [], {"val/accuracy": 0.219, "val/prompts": 32.0}, {"val/accuracy": 0.312, "val/prompts": 32.0}
    )
    assert o.val_problems == 32 and "within the noise" in o.verdict()
