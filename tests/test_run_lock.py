"""One process per run directory, sweep and warm-up cache entry (issue 17, item 3).

Real processes, synchronised by files they create (never by delays): a second `archer train` on a
run in use exits 1 naming the holder's pid and touches nothing; a SIGKILLed holder's lock is taken
over; two runs needing one warm-up build it once (the second waits, then copies it).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from small_run import SMALL_INFLUENCE_PRESET, SMALL_PRESET, SMALL_RUN
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.metrics import read_metrics

HERE = Path(__file__).parent
TINY = [
    *SMALL_RUN,
    "rollout.val.max_prompts=8",
    "trainer.total_steps=2",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def wait_for(proc: subprocess.Popen, ready) -> None:
    """Poll until `ready()` (progress of the other process); fail if it exited first."""
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"the process exited ({proc.returncode}) before it got there: {proc.stdout.read()}"
            )
        time.sleep(0.01)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".archer.lock"
    }


def archer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archer", *args], capture_output=True, text=True, env=ENV, timeout=300
    )


def test_a_second_train_on_a_run_in_use_exits_1_naming_the_holder_and_touches_nothing(tmp_path):
    out, go = tmp_path / "run", tmp_path / "go"
    args = ["train", "--out", str(out), *TINY, f"trainer.cache_dir={tmp_path / 'cache'}"]
    holder = subprocess.Popen(
        [sys.executable, str(HERE / "paused_train_worker.py"), "1", str(go), *args, "--preset", SMALL_PRESET],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
        text=True,
    )
    try:
        wait_for(holder, lambda: len(read_metrics(out)) >= 1)  # it is training, holding the run
        before = digest(out)
        assert "data/train.parquet" in before
        for extra in (["--preset", SMALL_PRESET], ["--resume"]):
            r = archer(*args, *extra)
            assert r.returncode == 1, r.stdout + r.stderr
            assert f"in use by process {holder.pid}" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
            assert digest(out) == before  # the second process wrote nothing (it overwrote train.parquet)
        go.touch()
        text, _ = holder.communicate(timeout=300)
        assert holder.returncode == 0, text
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]


def test_the_lock_of_a_sigkilled_run_is_taken_over(tmp_path):
    out, go = tmp_path / "run", tmp_path / "go"
    args = [
        "train",
        "--out",
        str(out),
        *TINY,
        f"trainer.cache_dir={tmp_path / 'cache'}",
        "trainer.save_every=1",
    ]
    holder = subprocess.Popen(
        [sys.executable, str(HERE / "paused_train_worker.py"), "3", str(go), *args, "--preset", SMALL_PRESET],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
        text=True,
    )
    try:
        wait_for(holder, lambda: len(read_metrics(out)) >= 3)  # steps 0..2 logged, paused, holding the lock
        assert str(holder.pid) in (out / ".archer.lock").read_text()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    r = archer(*args, "--resume", "trainer.total_steps=3")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert [m["step"] for m in read_metrics(out)] == [0, 1, 2, 3]
    assert str(os.getpid()) not in (out / ".archer.lock").read_text()


def test_a_sweep_in_use_exits_1_naming_the_holder(tmp_path):
    sweep, ready = tmp_path / "sweep", tmp_path / "ready"
    grid = tmp_path / "grid.yaml"
    grid.write_text("influence.max_modules: [2, 4]\n")
    holder = subprocess.Popen(
        [sys.executable, str(HERE / "lock_holder_worker.py"), "hold", str(sweep / ".sweep.lock"), str(ready)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
        text=True,
    )
    try:
        wait_for(holder, ready.exists)
        r = CliRunner().invoke(
            app,
            ["ablate", "--preset", SMALL_INFLUENCE_PRESET, "--grid", str(grid), "--out", str(sweep), *TINY],
        )
        assert r.exit_code == 1, r.output
        assert f"in use by process {holder.pid}" in r.output
        assert sorted(p.name for p in sweep.iterdir()) == [".sweep.lock"]  # no sweep.json, no case folder
    finally:
        holder.kill()
        holder.communicate()
    # the holder is gone (killed): its lock is free again, and a sweep folder holding only the lock is new
    r = CliRunner().invoke(
        app,
        [
            "ablate",
            "--preset",
            SMALL_INFLUENCE_PRESET,
            "--grid",
            str(grid),
            "--out",
            str(sweep),
            "--dry-run",
            *TINY,
        ],
    )
    assert r.exit_code == 0, r.output


def test_two_runs_needing_one_warmup_build_it_once(tmp_path):
    """The first builds the cache entry while holding its lock; the second waits (naming the
    builder), then copies the finished warm-up instead of training its own."""
    cache, status = tmp_path / "cache", tmp_path / "status"
    status.mkdir()
    worker = [sys.executable, str(HERE / "lock_holder_worker.py"), "warmup"]
    tiny = [t for t in TINY if not t.startswith("warmup.steps")] + ["warmup.steps=3"]

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*worker, str(tmp_path / name), str(cache), str(status), *tiny],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=ENV,
            text=True,
        )

    a = start("a")
    b = None
    try:
        wait_for(a, lambda: (status / f"{a.pid}.building").exists())
        b = start("b")
        wait_for(b, lambda: (status / f"{b.pid}.waiting").exists())
        assert (status / f"{b.pid}.waiting").read_text() == f"process {a.pid}"
        (status / "go").touch()
        for p in (a, b):
            text, _ = p.communicate(timeout=300)
            assert p.returncode == 0, text
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert (status / f"{a.pid}.trained").exists() and (status / f"{b.pid}.cache").exists()
    assert not (status / f"{b.pid}.building").exists()  # b never trained a warm-up of its own
    assert digest(tmp_path / "a" / "warmup") == digest(tmp_path / "b" / "warmup")
    assert (
        len(list(cache.glob(".warmup-*.lock"))) == 1
        and len([p for p in cache.glob("warmup-*") if p.is_dir()]) == 1
    )


def test_the_verl_engine_takes_the_same_lock_before_ray(tmp_path):
    """`archer train` on a verl preset is refused the run directory held by another process,
    before it writes data, a model or a config there (and before Ray starts)."""
    out, ready = tmp_path / "run", tmp_path / "ready"
    holder = subprocess.Popen(
        [sys.executable, str(HERE / "lock_holder_worker.py"), "hold", str(out / ".archer.lock"), str(ready)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
        text=True,
    )
    try:
        wait_for(holder, ready.exists)
        r = CliRunner().invoke(
            app,
            [
                "train",
                "--preset",
                "quickstart-verl",
                "--out",
                str(out),
                f"trainer.cache_dir={tmp_path / 'c'}",
            ],
        )
        assert r.exit_code == 1, r.output
        assert f"in use by process {holder.pid}" in r.output
        assert sorted(p.name for p in out.iterdir()) == [".archer.lock"]
    finally:
        holder.kill()
        holder.communicate()
