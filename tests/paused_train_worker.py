"""`archer train` that pauses after its Nth metrics line (tests/test_interrupt_resume.py, test_run_lock.py).

Run as `python paused_train_worker.py N GO_FILE ARCHER_ARGS...`. After writing metrics line N the run
waits until GO_FILE exists; the test sends SIGINT while it waits and then creates GO_FILE. So the
interrupt lands at a point chosen by the run's progress, however fast or slow the machine is,
and it is a real signal from another process to the real CLI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from archer.cli.main import main
from archer.core.metrics import MetricsLog


def pause_after(n: int, go: Path) -> None:
    original = MetricsLog.log
    written = [0]

    def log(self, step, metrics):
        original(self, step, metrics)
        written[0] += 1
        if written[0] == n:
            while not go.exists():
                time.sleep(0.01)

    MetricsLog.log = log


if __name__ == "__main__":
    pause_after(int(sys.argv[1]), Path(sys.argv[2]))
    main(sys.argv[3:])
