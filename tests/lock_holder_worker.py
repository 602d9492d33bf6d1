"""For tests/test_run_lock.py: hold one archer lock until told to stop, or build a warm-up.

`python lock_holder_worker.py hold LOCK_FILE READY_FILE` takes the lock with archer's own
`hold_lock`, creates READY_FILE, then waits for a line on stdin (the test SIGKILLs it or closes
stdin). `python lock_holder_worker.py warmup RUN_DIR CACHE_DIR STATUS_DIR OVERRIDES...` runs
`prepare_warmup` for the quickstart with OVERRIDES, writing `STATUS_DIR/<pid>.building` before its
first warm-up step and waiting there for `STATUS_DIR/go`, `STATUS_DIR/<pid>.waiting` when it waits
for another builder, and `STATUS_DIR/<pid>.<source>` when done.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from small_run import SMALL_PRESET


def hold(lock: Path, ready: Path) -> None:
    from archer.core.runlock import hold_lock

    with hold_lock(lock, what="test"):
        ready.touch()
        sys.stdin.readline()


def warmup(run_dir: Path, cache_dir: Path, status: Path, overrides: list[str]) -> None:
    from archer.core.config import compose
    from archer.core.models.loading import load_tokenizer
    from archer.core.rollout.prompts import load_datasets
    from archer.core.warmup import prepare_warmup

    cfg = compose(SMALL_PRESET, overrides).cfg
    tok = load_tokenizer(cfg.model)
    train, _, _ = load_datasets(cfg, tok, run_dir)
    pid = os.getpid()

    def on_step(i: int, loss: float) -> None:
        if i == 1:
            (status / f"{pid}.building").touch()
            while not (status / "go").exists():
                time.sleep(0.01)

    def on_wait(holder: str) -> None:
        # whole or absent: the test reads it as soon as it exists (a race seen on a loaded machine)
        tmp = status / f".{pid}.waiting.tmp"
        tmp.write_text(holder)
        tmp.rename(status / f"{pid}.waiting")

    result = prepare_warmup(cfg, run_dir, cache_dir, train, device="cpu", on_step=on_step, on_wait=on_wait)
    (status / f"{pid}.{result.source}").touch()


if __name__ == "__main__":
    if sys.argv[1] == "hold":
        hold(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        warmup(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:])
