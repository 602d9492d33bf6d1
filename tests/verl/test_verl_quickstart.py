"""The whole verl path on this machine's CPUs: `archer train --preset quickstart-verl` through verl's
real trainer (Ray, TransferQueue, FSDP2 on gloo, archer_sync, the influence recorder, archer's hf
rollout, the reward, validation, checkpoints), killed after a checkpoint and resumed.

The kill is driven by progress (the step-2 checkpoint appeared), never by a delay; the time limits
below only turn a hang into a failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from own_ray import OwnRay

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

pytestmark = pytest.mark.verl
REPO = Path(__file__).resolve().parents[2]
HANG_S = 1500  # a hang, not a slow machine: a 3-step run takes a few minutes on 2 loaded cores


OWN_RAY = OwnRay()  # this test's Ray processes only (own_ray.py)


@pytest.fixture(scope="module", autouse=True)
def _remove_own_ray():
    yield
    OWN_RAY.remove()


def _archer(args: list[str], log: Path) -> subprocess.Popen:
    env = OWN_RAY.env({**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"})
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    return subprocess.Popen(
        [sys.executable, "-m", "archer", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=log.parent,
        start_new_session=True,  # its own process group: Ray's processes die with it
    )


def _wait(proc: subprocess.Popen, log: Path, until) -> None:
    deadline = time.monotonic() + HANG_S
    while not until():
        if proc.poll() is not None:
            pytest.fail(f"archer exited with {proc.returncode} early:\n{log.read_text()[-6000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no progress in {HANG_S} s:\n{log.read_text()[-6000:]}")
        time.sleep(0.5)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    OWN_RAY.kill()  # what setsid'd away from the group


def test_quickstart_verl_trains_is_killed_after_a_checkpoint_and_resumes(tmp_path):
    run = tmp_path / "run"
    common = [f"trainer.cache_dir={tmp_path / 'cache'}"]
    first = _archer(
        [
            "train",
            "--preset",
            "quickstart-verl",
            "--out",
            str(run),
            "trainer.total_steps=3",
            "trainer.save_every=1",
            "trainer.val_every=3",
            "warmup.steps=100",
            "trainer.logging.tensorboard=true",
            "trainer.logging.histograms_every=1",
            *common,
        ],
        tmp_path / "first.log",
    )
    ckpt = run / "checkpoints"
    try:
        _wait(first, tmp_path / "first.log", lambda: (ckpt / "global_step_2").is_dir())
    finally:
        _kill_group(first)
    assert first.returncode == -signal.SIGKILL

    second = _archer(["train", "--resume", "--out", str(run)], tmp_path / "second.log")
    try:
        assert second.wait(timeout=HANG_S) == 0, (tmp_path / "second.log").read_text()[-6000:]
    finally:
        _kill_group(second)

    # checkpoints: verl's latest is step 3; verl ran its sync paths (no TransferQueue dump, which
    # its async modes write into every checkpoint)
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    for step in (1, 2, 3):
        assert (ckpt / f"global_step_{step}" / "actor").is_dir()
        assert not (ckpt / f"global_step_{step}" / "transfer_queue").exists()
    # metrics: one line per step, the killed run's step(s) after the checkpoint cut back
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if s > 0]
    assert sorted(set(trained)) == [1, 2, 3] and len(trained) == len(set(trained)), steps
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["step"] == 3][0]
    assert any(k.startswith("val-core/") for k in last), sorted(last)  # validation ran
    assert 0 <= last["val/accuracy"] <= 1  # archer's name for verl's val-core accuracy
    assert last["val/prompts"] == 32  # the summary's noise bound: the preset's 32 held-out problems
    # the driver printed the validation as it happened, and the closing summary
    second_log = (tmp_path / "second.log").read_text()
    assert "validation at step 3: accuracy" in second_log, second_log[-3000:]
    assert "validation accuracy before → after" in second_log, second_log[-3000:]
    # histograms of the traced steps, next to verl's scalars in <run>/tensorboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0})
    tb.Reload()
    assert {1, 3} <= {e.step for e in tb.Histograms("trace/entropy")}, tb.Tags()
    # the hf rollout's log-probs are the actor's: verl logs their difference
    diffs = [r["training/rollout_probs_diff_max"] for r in rows if "training/rollout_probs_diff_max" in r]
    assert diffs and max(diffs) < 1e-3, diffs

    # the trace: every step once, entropy for every response, influence for the traced groups
    from archer.core.trace.reader import TraceReader, list_entropy, list_influence

    trace = TraceReader(run / "trace")
    assert trace.steps() == [1, 2, 3], trace.steps()
    influenced = 0
    for step in trace.steps():
        table = trace.read_step(step)
        assert table.num_rows == 8 * 4  # prompts x rollout.n, every response once
        for row in range(table.num_rows):
            assert len(list_entropy(table, row)) > 0
            influenced += list_influence(table, row) is not None
    assert influenced > 0, "no traced group in 3 steps"
