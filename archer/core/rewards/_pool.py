"""Run grading calls in worker processes so that a per-call timeout works from any thread.

Why: math-verify's own timeouts use `signal.alarm`, which only works on the main thread. From a
thread, a thread pool or a Ray worker it raises, and broad `except`s upstream turn that into a
reward of 0 for every response (verl PR #5635, TRL PR #5281). A thread cannot be stopped, so the
only timeout that is both thread-agnostic and hard is a process we can kill: each call runs in a
long-lived worker, the calling thread waits on the workers' sockets with a deadline, and a worker
that overruns is killed (SIGKILL) and replaced. No signals are used in the caller.

Workers are plain subprocesses (`python -m archer.core.rewards._pool FD MODULE...`), not
multiprocessing children: that avoids fork-with-threads hazards, re-running the caller's
`__main__`, and the "daemonic processes are not allowed to have children" rule inside other
pools. Several threads may share one pool; each call holds the workers it is using.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 120.0  # importing sympy on a loaded machine can take a while


class WorkerStartError(RuntimeError):
    """A worker process could not start (bad environment, missing package)."""


@dataclass
class Outcome:
    """What became of one call: `status` is "ok", "timeout" or "error"."""

    status: str
    value: Any = None
    error: str | None = None


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class _Worker:
    def __init__(self, preload: Sequence[str]):
        from multiprocessing.connection import Connection

        parent, child = socket.socketpair()
        env = dict(os.environ)
        # The worker must import the same archer as the caller, even from an un-installed checkout.
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "archer.core.rewards._pool", str(child.fileno()), *preload],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        except OSError as e:
            parent.close()
            raise WorkerStartError(f"cannot start a grading process: {e}") from e
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.ready = False
        self.started = time.monotonic()
        self.task: int | None = None
        self.deadline = 0.0

    def send(self, index: int, payload: Any, timeout_s: float) -> None:
        self.conn.send(payload)
        self.task = index
        self.deadline = time.monotonic() + timeout_s

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
            pass
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.wait(timeout=2)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


class WorkerPool:
    """Up to `max_workers` grading processes that import `preload` once at start."""

    def __init__(self, preload: Sequence[str] = ()):
        self.preload = tuple(preload)
        self._cv = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._closed = False

    # -- worker bookkeeping (shared between threads) --------------------------------------------
    def _acquire(self, limit: int, block: bool) -> _Worker | None:
        with self._cv:
            while True:
                if self._closed:
                    raise RuntimeError("the grading pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._live < limit:
                    self._live += 1
                    break
                if not block:
                    return None
                self._cv.wait()
        try:
            return _Worker(self.preload)
        except BaseException:
            with self._cv:
                self._live -= 1
                self._cv.notify()
            raise

    def _release(self, w: _Worker) -> None:
        with self._cv:
            if self._closed:
                w.stop()
                self._live -= 1
            else:
                self._idle.append(w)
            self._cv.notify()

    def _discard(self, w: _Worker) -> None:
        w.kill()
        with self._cv:
            self._live -= 1
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cv.notify_all()
        for w in idle:
            w.stop()

    @property
    def size(self) -> int:
        """Worker processes alive now (idle or busy)."""
        with self._cv:
            return self._live

    # -- the one public operation ----------------------------------------------------------------
    def map(
        self, fn: str, arglist: Sequence[tuple], *, timeout_s: float, max_workers: int | None = None
    ) -> list[Outcome]:
        """Call `fn` ("module:function") on each args tuple; each call gets `timeout_s` seconds.

        Blocks the calling thread only; a call that overruns is reported as a timeout and its
        worker is killed and replaced. Never raises for a bad call, only when workers cannot start.
        """
        from multiprocessing.connection import wait

        limit = max(1, max_workers or default_workers())
        results: list[Outcome | None] = [None] * len(arglist)
        pending = deque(range(len(arglist)))
        held: list[_Worker] = []
        ok = False
        try:
            while pending or any(w.task is not None for w in held):
                free = sum(1 for w in held if w.task is None)
                while len(held) < limit and len(pending) > free:
                    w = self._acquire(limit, block=not held)
                    if w is None:
                        break
                    held.append(w)
                    free += 1
                for w in held:
                    if pending and w.ready and w.task is None:
                        i = pending.popleft()
                        w.send(i, (fn, arglist[i]), timeout_s)
                watched = [w for w in held if w.task is not None or not w.ready]
                if not watched:
                    continue
                now = time.monotonic()
                due = min(w.deadline if w.ready else w.started + STARTUP_TIMEOUT_S for w in watched)
                by_conn = {w.conn: w for w in watched}
                for conn in wait(list(by_conn), timeout=max(0.0, due - now)):
                    w = by_conn[conn]
                    try:
                        kind, *rest = conn.recv()
                    except (EOFError, OSError):
                        held.remove(w)
                        try:  # the socket closes a moment before the exit status is collectable
                            code = w.proc.wait(timeout=5)
                        except Exception:  # noqa: BLE001 - still running or already reaped
                            code = w.proc.poll()
                        self._discard(w)
                        if not w.ready:
                            raise WorkerStartError(
                                f"a grading process exited at start (exit code {code})"
                            ) from None
                        results[w.task] = Outcome("error", error=f"grading process died (exit code {code})")
                        continue
                    if kind == "ready":
                        w.ready = True
                    elif kind == "failed":
                        held.remove(w)
                        self._discard(w)
                        raise WorkerStartError(rest[0])
                    else:
                        results[w.task] = Outcome(kind, *rest)
                        w.task = None
                now = time.monotonic()
                for w in list(held):
                    if w.task is not None and now >= w.deadline:
                        results[w.task] = Outcome("timeout", error="timeout")
                        held.remove(w)
                        self._discard(w)
                    elif not w.ready and now >= w.started + STARTUP_TIMEOUT_S:
                        held.remove(w)
                        self._discard(w)
                        raise WorkerStartError(
                            f"a grading process did not start within {STARTUP_TIMEOUT_S:.0f}s"
                        )
            ok = True
        finally:
            for w in held:
                if ok or (w.ready and w.task is None):
                    self._release(w)
                else:  # interrupted mid-call: its state is unknown
                    self._discard(w)
        return results  # type: ignore[return-value]


_POOLS: dict[tuple[str, ...], WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(preload: Sequence[str]) -> WorkerPool:
    """The process-wide pool for these preloaded modules (created on first use)."""
    key = tuple(preload)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = WorkerPool(key)
        return pool


def shutdown() -> None:
    """Stop every worker (also run at interpreter exit)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.close()


def _forget_after_fork() -> None:
    # A forked child must not talk to its parent's workers; it starts its own on first use.
    # The lock may have been held by another thread at fork time, so it is replaced too.
    global _POOLS_LOCK
    _POOLS_LOCK = threading.Lock()
    _POOLS.clear()


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# -- the worker side -----------------------------------------------------------------------------
def _watch_parent(parent: int) -> None:
    # If the caller dies while we are stuck in a long computation, nobody would ever kill us.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _resolve(ref: str, cache: dict) -> Any:
    fn = cache.get(ref)
    if fn is None:
        module, _, name = ref.partition(":")
        fn = cache[ref] = getattr(importlib.import_module(module), name)
    return fn


def _worker_main(argv: list[str]) -> int:
    from multiprocessing.connection import Connection

    conn = Connection(int(argv[0]))
    # Ctrl-C in a terminal reaches the whole process group; the trainer finishes its step on the
    # first one (archer.core.interrupt), so its graders must keep working: the caller stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        for module in argv[1:]:
            importlib.import_module(module)
    except BaseException:  # noqa: BLE001 - reported to the caller, which raises it
        conn.send(("failed", "grading process could not import: " + traceback.format_exc(limit=3)))
        return 1
    conn.send(("ready",))
    cache: dict = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return 0
        if msg is None:
            return 0
        ref, args = msg
        try:
            conn.send(("ok", _resolve(ref, cache)(*args)))
        except Exception as e:  # noqa: BLE001 - one bad call must not kill the worker
            conn.send(("error", None, f"{type(e).__name__}: {e}"[:500]))


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
