"""One Ray of the test's own: the end-to-end tests run `archer train` in a subprocess with
RAY_TMPDIR set to a folder of this process, and clean up by killing exactly the processes that
carry it in their environment (raylet, GCS, workers inherit it) — never `ray stop --force`, which
stops every Ray cluster on the machine (another test run's, a user's)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path


class OwnRay:
    def __init__(self) -> None:
        # short: Ray's socket paths under it must fit 107 bytes
        self.tmpdir = tempfile.mkdtemp(prefix="archer-ray-", dir="/tmp")

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "RAY_TMPDIR": self.tmpdir}

    def kill(self) -> None:
        """SIGKILL every process started with this RAY_TMPDIR (what setsid'd away from the group)."""
        mark = f"RAY_TMPDIR={self.tmpdir}".encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue  # gone, or not ours to read
            if mark in environ.split(b"\0") and int(pid) != os.getpid():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


HANG_S = 1800  # a hang, not a slow machine: a smoke run takes a few minutes on 2 loaded cores


def train_smoke(preset: str, tmp_path: Path, repo: Path) -> tuple[Path, dict[int, dict]]:
    """`archer train --preset PRESET` in a subprocess with its own Ray and an empty warm-up cache;
    asserts it exits 0 (the log's tail otherwise) and returns the run folder and its step metrics."""
    import json
    import subprocess
    import sys

    run = tmp_path / "run"
    log = tmp_path / "train.log"
    own_ray = OwnRay()
    env = own_ray.env({**os.environ, "PYTHONPATH": str(repo), "RAY_AUTH_MODE": "disabled"})
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    args = ["train", "--preset", preset, "--out", str(run), f"trainer.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "archer", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
        start_new_session=True,  # its own process group: Ray's processes die with it
    )
    try:
        rc = proc.wait(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        own_ray.remove()
    assert rc == 0, log.read_text()[-8000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return run, {r["step"]: r for r in rows if r["step"] > 0}
