"""One process per directory: an OS file lock held for the life of a run, a sweep or a warm-up.

`hold_lock(path)` takes `fcntl.flock` on `path` (created if absent) and writes the holder's pid
into it. The kernel drops the lock when the holder dies, however it dies (kill -9 included), so a
lock is never stale: the next process simply takes it over. The file itself is left in place (its
text is only a note of the last holder; unlinking it would let two processes lock two different
files of the same name). flock locks are per open file: a process that forks a long-lived child
after taking the lock shares it with that child.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from archer.errors import ArcherError, UsageError

RUN_LOCK = ".archer.lock"


class LockedError(ArcherError):
    """Another live process holds the directory (exit 1: retry when it is done)."""


def _holder(fd: int) -> dict:
    """The holder's note; it may be an instant behind the lock, so read it a few times."""
    for _ in range(50):
        try:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            note = json.loads(text)
            if isinstance(note, dict) and note.get("pid"):
                return note
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return {}


def describe_holder(note: dict) -> str:
    if not note:
        return "another process"
    where = f" on {note['host']}" if note.get("host") and note["host"] != socket.gethostname() else ""
    return f"process {note['pid']}{where}"


def open_lock_file(path: Path) -> int:
    """Open (create) the lock file; a directory that cannot hold it is a usage error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UsageError(
            f"cannot use {path.parent}: {e.strerror or e}",
            hint="choose a directory you can write to",
        ) from e


@contextlib.contextmanager
def hold_lock(
    path: Path,
    *,
    what: str,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
    hint: str | None = None,
) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the `with` block.

    Without `wait`, a lock held by another process raises `LockedError` naming its pid; with
    `wait`, `on_wait(holder)` is called once and the call blocks until the holder is done."""
    path = Path(path)
    fd = open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = describe_holder(_holder(fd))
            if not wait:
                raise LockedError(
                    f"{what} is in use by {holder} (lock {path})",
                    hint=hint or "wait for it to finish or stop it; a lock of a dead process is taken over",
                ) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:500],
        }
        with contextlib.suppress(OSError):  # a full disk must not stop the lock from working
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(note) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """`<run>/.archer.lock`: one `archer train` per run directory (both engines). A run refused
    before it wrote anything leaves no folder behind: a directory this call made and that holds
    only the lock file when the run ends is removed again."""
    run_dir = Path(run_dir)
    made = not run_dir.exists()
    try:
        with hold_lock(
            run_dir / RUN_LOCK,
            what=f"run directory {run_dir}",
            hint="another 'archer train' is using it: wait for it, stop it, or choose another --out",
        ):
            yield
    finally:
        if made:
            with contextlib.suppress(OSError):
                if [p.name for p in run_dir.iterdir()] == [RUN_LOCK]:
                    (run_dir / RUN_LOCK).unlink()
                    run_dir.rmdir()
