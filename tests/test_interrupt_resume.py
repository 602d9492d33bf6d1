"""Ctrl-C then --resume gives the run an uninterrupted run would have given (issue 17, item 2).

The first SIGINT lets the step under way finish and checkpoints it; a second one stops at once and
keeps the last checkpoint. Either way the resumed run's metrics equal the straight run's. The
interrupts are sent at points chosen by the run's progress (the Nth metrics line, the Kth rollout
or update call), never after a delay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from small_run import SMALL_PRESET, SMALL_RUN

from archer.core.config import compose
from archer.core.metrics import read_metrics
from archer.core.trace import TraceReader
from archer.errors import Interrupted

TINY = [
    *SMALL_RUN,
    "rollout.temperature=1.5",
    "rollout.val.max_prompts=8",
    "rollout.val.temperature=1.0",
    "trainer.total_steps=6",
    "trainer.save_every=2",
    "trainer.val_every=3",
]


def overrides(cache: Path) -> list[str]:
    return [*TINY, f"trainer.cache_dir={cache}"]


def run_local(cache: Path, out: Path, *, resume: bool = False) -> None:
    from archer.core.engines.local.trainer import LocalTrainer

    c = compose(str(out / "config.yaml") if resume else SMALL_PRESET, overrides(cache))
    t = LocalTrainer(c, out, resume=resume)
    try:
        t.setup()
        t.fit()
    finally:
        t.close()


def comparable(run: Path) -> list[dict]:
    """Every metric that does not measure time or memory, per step."""
    return [
        {k: v for k, v in row.items() if not k.startswith(("time/", "perf/"))} for row in read_metrics(run)
    ]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run; its warm-up cache is shared by every run of this module."""
    root = tmp_path_factory.mktemp("straight")
    run_local(root / "cache", root / "run")
    rows = comparable(root / "run")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert len({r["rollout/entropy_mean"] for r in rows[1:]}) == 6, "the test could not tell steps apart"
    return root


def sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def check_resume_matches(straight: Path, out: Path) -> None:
    run_local(straight / "cache", out, resume=True)
    assert comparable(out) == comparable(straight / "run")
    assert TraceReader(out).steps() == [1, 2, 3, 4, 5, 6]


def interrupt_on_call(monkeypatch, target: object, name: str, calls: set[int]) -> list[int]:
    """Patch `target.name` to send SIGINT to this process on the given (1-based) calls."""
    original = getattr(target, name)
    seen = [0]

    def wrapped(*args, **kwargs):
        seen[0] += 1
        if seen[0] in calls:
            sigint()
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)
    return seen


@pytest.mark.parametrize(
    ("where", "calls", "saved"),
    [
        ("rollout", {2}, 2),  # inside step 2, before its update: step 2 finishes and is saved
        ("update", {4}, 4),  # inside step 4's update (a save step anyway)
        ("rollout", {5}, 5),  # inside step 5, after the validation of step 3's boundary
        ("metrics", {2}, 1),  # just after step 1's metrics line: step 1 is saved (not a save step)
        ("metrics", {4}, 3),  # after step 3's line (a validation step)
    ],
)
def test_one_ctrl_c_finishes_the_step_and_resume_is_exact(
    straight, tmp_path, monkeypatch, where, calls, saved
):
    from archer.core.engines.local import trainer as trainer_mod
    from archer.core.metrics import MetricsLog

    target, name = {
        "rollout": (trainer_mod.LocalTrainer, "_generate"),
        "update": (trainer_mod, "ppo_update"),
        "metrics": (MetricsLog, "log"),
    }[where]
    if where == "metrics":  # after the line is written
        original = MetricsLog.log
        seen = [0]

        def log(self, step, metrics):
            original(self, step, metrics)
            seen[0] += 1
            if seen[0] in calls:
                sigint()

        monkeypatch.setattr(MetricsLog, "log", log)
    else:
        interrupt_on_call(monkeypatch, target, name, calls)
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as e:
        run_local(straight / "cache", out)
    assert f"after step {saved}" in e.value.message
    assert "--resume" in (e.value.hint or "")
    assert (out / "checkpoints" / f"step_{saved:06d}").is_dir()
    assert (out / "checkpoints" / "latest.txt").read_text().strip() == f"step_{saved:06d}"
    assert [r["step"] for r in read_metrics(out)] == list(range(saved + 1))
    monkeypatch.undo()
    check_resume_matches(straight, out)


def test_second_ctrl_c_stops_now_and_keeps_the_last_checkpoint(straight, tmp_path, monkeypatch):
    from archer.core.engines.local import trainer as trainer_mod

    original = trainer_mod.ppo_update

    def update(*args, **kwargs):  # step 3 (the first call after the step-2 checkpoint)
        if update.calls == 2:
            sigint()
            sigint()  # the user insists: stop inside this step
        update.calls += 1
        return original(*args, **kwargs)

    update.calls = 0
    monkeypatch.setattr(trainer_mod, "ppo_update", update)
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as e:
        run_local(straight / "cache", out)
    assert "during step 3" in e.value.message and "step_000002" in e.value.message
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000002"]
    monkeypatch.undo()
    check_resume_matches(straight, out)


def test_ctrl_c_after_the_first_validation_then_resume_logs_step_0_once(straight, tmp_path, monkeypatch):
    """Stopped before the first checkpoint, after step 0's validation line: the resumed run starts
    over and metrics.jsonl holds step 0 once (it held it twice)."""
    from archer.core.metrics import MetricsLog

    original = MetricsLog.log

    def log(self, step, metrics):
        original(self, step, metrics)
        if step == 0:
            sigint()

    monkeypatch.setattr(MetricsLog, "log", log)
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as e:
        run_local(straight / "cache", out)
    assert "after step 0" in e.value.message
    assert not list((out / "checkpoints").glob("step_*"))
    monkeypatch.undo()
    check_resume_matches(straight, out)
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("lines", [2, 4])
def test_sigint_from_another_process_after_the_nth_metrics_line(straight, tmp_path, lines):
    """The real thing: `archer train` in its own process gets SIGINT once its metrics file holds
    N lines (tests/paused_train_worker.py holds the run there until the signal is sent); it exits 130
    naming --resume, and the resumed run equals the straight one."""
    out, go = tmp_path / "run", tmp_path / "go"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["train", "--out", str(out), *overrides(straight / "cache")]
    worker = [sys.executable, str(Path(__file__).with_name("paused_train_worker.py")), str(lines), str(go)]
    proc = subprocess.Popen(
        [*worker, *args, "--preset", SMALL_PRESET],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        while proc.poll() is None and len(read_metrics(out)) < lines:
            time.sleep(0.01)  # polls the run's progress; no outcome depends on how long this takes
        proc.send_signal(signal.SIGINT)
        go.touch()
        text, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, text
    assert f"interrupted after step {lines - 1}" in text and "--resume" in text
    assert (out / "checkpoints" / "latest.txt").read_text().strip() == f"step_{lines - 1:06d}"
    r = subprocess.run(
        [sys.executable, "-m", "archer", *args, "--resume"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert comparable(out) == comparable(straight / "run")
    assert json.loads((out / "run.json").read_text())["resumes"]
