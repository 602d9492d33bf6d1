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
