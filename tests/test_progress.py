"""What `archer train` prints while it runs: the step line's fields, the warm-up bar's ETA (live
and in logs), validation as it happens (verl: followed from metrics.jsonl), the closing summary."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from rich.console import Console

from archer.cli.progress import ConsoleReporter, format_step
from archer.core.engines.verl.steps import val_accuracy
from archer.core.metrics import MetricsFollower

BASE = {
    "reward/mean": 0.5,
    "reward/accuracy": 0.5,
    "rollout/entropy_mean": 0.4,
    "actor/pg_clipfrac": 0.0,
    "time/step": 1.0,
}


def test_kl_is_shown_only_with_the_kl_loss():
    assert " kl " not in format_step(3, 10, BASE)
    assert "kl 0.0123" in format_step(3, 10, {**BASE, "actor/kl_loss": 0.0123})
    assert "influence" not in format_step(3, 10, BASE)
    assert "influence 0.25" in format_step(3, 10, {**BASE, "time/influence": 0.25})


def test_warmup_log_lines_carry_elapsed_and_eta(monkeypatch, capsys):
    import time

    clock = iter(float(t) for t in range(0, 1000, 2))  # each report 2 s after the last
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    r = ConsoleReporter(Console(file=open("/dev/null", "w")), live=False)
    for i in range(1, 101):
        r.warmup_progress(i, 100, 1.0 / i)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "warm-up 50/100  loss 0.020  elapsed 0:01:38 eta 0:01:40",
        "warm-up 100/100  loss 0.010  elapsed 0:03:18",
    ]


def test_live_warmup_bar_shows_an_eta():
    console = Console(record=True, force_terminal=True, width=140)
    r = ConsoleReporter(console, live=True)
    for i in range(1, 4):
        r.warmup_progress(i, 300, 0.5)
    r.warmup_done()
    text = console.export_text()
    assert "warm-up" in text and "3/300" in text and "eta" in text


def test_validation_is_printed_when_it_happens():
    console = Console(record=True, width=120)
    r = ConsoleReporter(console, live=False)
    r.validated(0, {"val/accuracy": 0.43})
    r.validated(100, {"val/accuracy": 0.37})
    r.validated(101, {"val-core/x/acc/mean@1": 0.1})  # nothing archer can name: silent
    assert console.export_text().splitlines() == [
        "validation before training: accuracy 0.430",
        "validation at step 100: accuracy 0.370",
    ]


def test_val_accuracy_from_verls_validation_metrics():
    m = {
        "val-core/arith/acc/mean@4": 0.5,
        "val-core/arith/acc/mean@1": 0.9,  # a smaller n: not the core number
        "val-aux/arith/reward/mean@4": 0.7,
        "val-core/gsm/acc/mean@4": 0.3,
        "val-core/gsm/acc/best@4/mean": 0.8,
    }
    assert val_accuracy(m) == pytest.approx(0.4)
    assert val_accuracy({"val-core/a/reward/mean@2": 0.25}) == 0.25  # a reward without `acc`
    assert val_accuracy({"val-aux/num_turns/mean": 2.0}) is None


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_metrics_follower_reports_each_whole_line_once(tmp_path):
    seen: list[int] = []
    f = MetricsFollower(tmp_path, lambda row: seen.append(row["step"]))
    f.poll()  # no file yet
    path = tmp_path / "metrics.jsonl"
    _append(path, json.dumps({"step": 0, "val/accuracy": 0.4}) + "\n" + '{"step": 1, "rew')
    f.poll()
    assert seen == [0]  # the torn line waits
    _append(path, 'ard/mean": 0.5}\n')
    f.poll()
    f.poll()
    assert seen == [0, 1]
    path.write_text(json.dumps({"step": 0}) + "\n")  # cut back (resume): nothing seen twice
    f.poll()
    _append(path, json.dumps({"step": 2}) + "\n")
    f.poll()
    assert seen == [0, 1, 2]


def test_metrics_follower_thread_skips_a_resumed_runs_past_and_reads_the_end_on_stop(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "val/accuracy": 0.1 * s}) + "\n" for s in range(3)))
    seen: list[int] = []
    got_three = threading.Event()

    def on_row(row):
        seen.append(row["step"])
        if row["step"] == 3:
            got_three.set()

    f = MetricsFollower(tmp_path, on_row, after_step=2, poll_s=0.01).start()
    _append(path, json.dumps({"step": 3}) + "\n")
    assert got_three.wait(60)
    _append(path, json.dumps({"step": 4, "val/accuracy": 0.5}) + "\n")
    f.stop()  # the last line, written just before the run ended, is still reported
    assert seen == [3, 4]


def test_summary_flags_a_drop_in_held_out_accuracy(tmp_path, monkeypatch):
    """The closing lines (both engines return a TrainResult): a drop is a warning, in words."""
    from archer.cli import _console
    from archer.cli.train import print_summary
    from archer.core.progress import TrainResult

    rows = [{"step": 0, "val/accuracy": 0.43}]
    rows += [{"step": s, "critic/score/mean": 0.4 + 0.01 * s} for s in range(1, 11)]  # verl's name
    rows[-1]["val/accuracy"] = 0.37
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    console = Console(record=True, width=200)
    monkeypatch.setattr(_console, "out", lambda: console)
    result = TrainResult(tmp_path, 5.0, 50.0, rows[0], rows[-1], None, "")
    print_summary(result, traced=False)
    text = console.export_text()
    assert "validation accuracy before → after: 0.430 → 0.370" in text
    assert "warning: held-out accuracy 0.430 → 0.370 while the training reward rose" in text
    assert "reward (mean of first 5 steps → last 5): 0.430 → 0.480 (+0.050)" in text
