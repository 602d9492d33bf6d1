"""Kill a trace-writing process with SIGKILL at many points of its work; the trace must stay whole.

Each trial starts tests/trace_crash_worker.py on the same trace directory (resuming after the
last step the manifest holds, or a few steps earlier so that the repair has work to do) and kills
it at a point chosen from its progress, never after a delay: as soon as it is ready (during the
repair), once the writer is open, after it handed N steps to the writer (N in flight), or once
the manifest holds N new lines (the writer busy with the next step). Then it checks what a
reader sees: only whole steps with exactly the expected contents, no manifest entry without its
file, latest_step.txt never ahead of the manifest. It resumes in-process, writes two more steps
and checks that the trace is clean (no duplicates, no debris). The plans are seeded, and since
they wait for progress, the same kills happen on a fast idle machine and a slow loaded one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from archer.core.trace import SCHEMA_VERSION, TraceReader, TraceWriter, codec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from trace_crash_worker import expected_table, same_table  # noqa: E402

TRIALS_PER_MODE = 12  # x 2 fsync modes = 24 kills
PROGRESS_TIMEOUT_S = 300.0  # only a stuck worker ever waits this long
# (what to wait for, how many): "ready"/"open" lines, N "submitted" lines, N new manifest lines
PLANS = [("ready", 0), ("open", 0), ("submitted", 1), ("submitted", 3)] + [
    ("manifest", n) for n in (1, 2, 4, 6)
]


class Progress:
    """The worker's stdout lines, read on a thread (so the worker never blocks on a full pipe)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line.strip())
                self.cond.notify_all()
        with self.cond:
            self.lines.append("<eof>")
            self.cond.notify_all()

    def wait_for(self, pred, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: pred(self.lines) or "<eof>" in self.lines, PROGRESS_TIMEOUT_S):
                pytest.fail(f"the worker made no progress towards {what} in {PROGRESS_TIMEOUT_S:g}s")
            if not pred(self.lines):
                pytest.fail(f"the worker exited before {what}: {self.lines[-5:]}")


def manifest_steps(trace_dir: Path) -> list[int]:
    """Steps of the manifest's complete lines (the last one may be half-written)."""
    try:
        text = (trace_dir / "manifest.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line)["step"] for line in text.split("\n")[:-1] if line.strip()]


def run_and_kill(trace_dir: Path, fsync: bool, resume_after: int, plan: tuple[str, int]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "trace_crash_worker.py"),
            str(trace_dir),
            "1" if fsync else "0",
            str(resume_after),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    kind, n = plan
    first_new = max(resume_after, 0) + 1
    try:
        progress = Progress(proc)
        progress.wait_for(lambda lines: "ready" in lines, "ready")
        if kind != "ready":
            progress.wait_for(lambda lines: "open" in lines, "open")  # the repair is done
        if kind == "submitted":
            progress.wait_for(lambda lines: f"submitted {first_new + n - 1}" in lines, f"{n} submitted steps")
        elif kind == "manifest":
            deadline = time.monotonic() + PROGRESS_TIMEOUT_S
            while sum(s >= first_new for s in manifest_steps(trace_dir)) < n:  # polled, not timed
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the worker stopped before {n} manifest lines: {proc.stderr.read()[-2000:]}")
                time.sleep(0.005)
        if proc.poll() is not None:  # it should be writing forever; dying by itself is a bug
            pytest.fail(f"worker exited with {proc.returncode} before the kill: {proc.stderr.read()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def step_files(trace_dir: Path) -> set[str]:
    return {f"steps/{p.name}" for p in (trace_dir / "steps").iterdir() if p.name.endswith(".parquet")}


def check_after_kill(trace_dir: Path, verified: set[int]) -> list[int]:
    """The reader's view of a killed run; returns the manifest steps. Steps in `verified` were
    content-checked in an earlier trial; their files are only checked to still exist."""
    r = TraceReader(trace_dir)
    entries = r.manifest()
    steps = [e["step"] for e in entries]
    raw_steps = []
    for line in (trace_dir / "manifest.jsonl").read_text().split("\n")[:-1]:  # whole lines only
        raw_steps.append(json.loads(line)["step"])
    assert raw_steps == steps == sorted(set(steps)), "duplicate or unordered manifest steps"
    assert r.steps() == steps, "the manifest names a missing file"
    assert not r.warnings, r.warnings
    for e in entries:
        step = e["step"]
        if step in verified:
            continue
        want = expected_table(step)
        got = r.read_step(step)
        assert got.num_rows == e["n_responses"] == want.num_rows == r.num_rows(step)
        assert same_table(got, want), f"step {step} does not read back as written"
        verified.add(step)
    latest = r.latest_step()
    if latest is not None:
        assert steps and latest <= steps[-1], f"latest_step.txt {latest} is ahead of {steps[-1:]}"
        assert latest in steps
    # step files may exist beyond the manifest (killed between the rename and the append, or
    # during a resume's repair before it deleted them), but never before its end, and they are
    # complete because they appeared by rename
    orphans = step_files(trace_dir) - {e["file"] for e in entries}
    for rel in orphans:
        step = int(rel.split("_")[1].split(".")[0])
        assert step > (steps[-1] if steps else 0), f"orphan {rel} inside the manifest's range"
        disk = pq.read_table(trace_dir / rel)  # as stored (v2): decoded as TraceReader does
        assert same_table(codec.decode(disk, disk.schema.metadata, None), expected_table(step))
    return steps


def resume_and_check(trace_dir: Path, fsync: bool, steps: list[int]) -> list[int]:
    k = steps[-1] if steps else 0
    with TraceWriter(trace_dir, {"model": "crash-test"}, fsync=fsync, resume_after_step=k) as w:
        for s in (k + 1, k + 2):
            w.submit(s, expected_table(s))
    r = TraceReader(trace_dir)
    now = r.steps()
    assert now == steps + [k + 1, k + 2]
    assert [e["step"] for e in r.manifest()] == now
    assert step_files(trace_dir) == {e["file"] for e in r.manifest()}, "debris left in steps/"
    leftovers = [p.name for d in (trace_dir, trace_dir / "steps") for p in d.iterdir() if ".tmp" in p.name]
    assert not leftovers
    assert r.latest_step() == k + 2
    for s in (k + 1, k + 2):
        assert same_table(r.read_step(s), expected_table(s))
    summary = r.summary
    assert summary["model"] == "crash-test" and summary["schema_version"] == SCHEMA_VERSION
    return now


@pytest.mark.slow
@pytest.mark.parametrize("fsync", [False, True], ids=["no-fsync", "fsync"])
def test_sigkill_at_many_points_of_progress_leaves_a_whole_trace(tmp_path, fsync):
    rng = random.Random(20240611 + fsync)
    plans = PLANS + [rng.choice(PLANS) for _ in range(TRIALS_PER_MODE - len(PLANS))]
    rng.shuffle(plans)
    trace_dir = tmp_path / "trace"
    resume_after = -1  # the first worker starts a fresh trace
    verified: set[int] = set()
    for plan in plans:
        run_and_kill(trace_dir, fsync, resume_after, plan)
        if not (trace_dir / "manifest.jsonl").exists():
            assert plan == ("ready", 0), plan  # only a kill during the very first repair can do this
            continue
        steps = check_after_kill(trace_dir, verified)
        if plan[0] == "manifest":  # lines seen before the kill never disappear after it
            assert sum(s > max(resume_after, 0) for s in steps) >= plan[1], (plan, steps)
        steps = resume_and_check(trace_dir, fsync, steps)
        # sometimes resume from an earlier checkpoint, so the worker's repair has work to do
        resume_after = max(steps[-1] - rng.choice((0, 0, 3)), 0)
        verified = {s for s in verified if s <= resume_after}  # later ones get rewritten
