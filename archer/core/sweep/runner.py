"""Run the cases of a sweep one after another, each in its own `archer train` process.

A child process per case means a crash, a hung CUDA context or an out-of-memory kill of one case
cannot take the sweep down. Its output goes to `<case>/train.log`; when it fails, the log's last
error line becomes the case's reason. An out-of-memory failure (CUDA/HIP OOM text, `MemoryError`,
a SIGKILL from the kernel's OOM killer) is retried once with `influence.grad_offload_to_cpu=true`
when influence is on and offloading was not already set. Ctrl-C stops the running case with
SIGINT (the local engine saves a checkpoint), waits for it, marks it "interrupted" and stops the
sweep; `--resume` continues such a case with `archer train --resume`. `sweep.json` is rewritten
after every change.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from archer.core.run import CONFIG_FILE, METRICS_FILE
from archer.core.runlock import RUN_LOCK
from archer.errors import ArcherError

from .state import DONE, FAILED, INTERRUPTED, PENDING, RUNNING, Attempt, CaseRecord, Sweep, now

LOG_FILE = "train.log"
OFFLOAD_OVERRIDE = "influence.grad_offload_to_cpu=true"
TAIL_BYTES = 64 * 1024

# Messages that mean the process ran out of memory (torch CUDA/HIP/XPU, Python, the C++ allocator).
OOM_RE = re.compile(
    r"out of memory|OutOfMemoryError|(?<![A-Za-z])MemoryError|CUBLAS_STATUS_ALLOC_FAILED|"
    r"can't allocate memory|std::bad_alloc|cudaErrorMemoryAllocation",
    re.IGNORECASE,
)
ERROR_RE = re.compile(r"^(?:Error:\s*(?P<msg>\S.*)|(?P<exc>[A-Za-z_][\w.]*(?:Error|Exception)\b:?.*))$")
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class SweepInterrupted(ArcherError):
    """Ctrl-C stopped the sweep; sweep.json says where (exit code 130, like an interrupted shell)."""

    exit_code = 130


class Display(Protocol):
    def event(self, sweep: Sweep, rec: CaseRecord | None, kind: str, text: str = "") -> None: ...


class _Silent:
    def event(self, sweep: Sweep, rec: CaseRecord | None, kind: str, text: str = "") -> None:
        pass


# --------------------------------------------------------------------------- failure analysis
def read_tail(path: Path, nbytes: int = TAIL_BYTES) -> list[str]:
    """The last lines of a log (bytes decoded leniently, ANSI colour codes removed)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            data = f.read()
    except OSError:
        return []
    return [ANSI_RE.sub("", line) for line in data.decode("utf-8", errors="replace").splitlines()]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def is_oom(lines: list[str], returncode: int | None) -> bool:
    """Out of memory: OOM text in the log's tail, or death by SIGKILL (what the OOM killer sends)."""
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return True
    return any(OOM_RE.search(line) for line in lines)


def last_error_line(lines: list[str]) -> str | None:
    """The last line that reads as an error: archer's `Error: ...` line, or `SomeError: ...`."""
    for line in reversed(lines):
        s = line.strip()
        m = ERROR_RE.match(s)
        if m:
            return (m.group("msg") or m.group("exc")).strip()
    return None


def failure_reason(lines: list[str], returncode: int | None) -> str:
    line = last_error_line(lines)
    if returncode is not None and returncode < 0:
        sig = _signal_name(-returncode)
        what = f"killed by {sig}" + (
            " (out of memory? the kernel's OOM killer sends SIGKILL)" if returncode == -9 else ""
        )
        return f"{what}: {line}" if line else what
    if line:
        return line
    tail = [s.strip() for s in lines if s.strip()]
    return f"exited with code {returncode}" + (f": {tail[-1]}" if tail else "")


# --------------------------------------------------------------------------- the command
def train_command(sweep: Sweep, rec: CaseRecord, overrides: list[str], resume: bool) -> list[str]:
    """`python -m archer train ...` for one attempt of a case."""
    out = str(sweep.case_dir(rec).resolve())
    if resume:  # the run's own config.yaml already holds every setting (and an OOM retry's offload)
        return [sys.executable, "-m", "archer", "train", "--resume", "--out", out]
    return [sys.executable, "-m", "archer", "train", "--preset", sweep.preset_path, "--out", out, *overrides]


CommandFn = Callable[[Sweep, CaseRecord, list[str], bool], list[str]]


# --------------------------------------------------------------------------- the runner
class SweepRunner:
    """Runs cases of `sweep` in order and keeps `sweep.json` up to date.

    `command` builds the argv of one attempt (tests swap in a fake); `display` gets an event for
    every change; `max_failures` stops the sweep after that many failed cases in this run.
    """

    def __init__(
        self,
        sweep: Sweep,
        *,
        command: CommandFn = train_command,
        display: Display | None = None,
        env: dict[str, str] | None = None,
        poll_seconds: float = 1.0,
        max_failures: int | None = None,
        stop_grace_seconds: float = 120.0,
    ):
        self.sweep = sweep
        self.command = command
        self.display = display or _Silent()
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env.setdefault("COLUMNS", "160")  # the child's Rich output is not a terminal: wide log lines
        self.poll_seconds = poll_seconds
        self.max_failures = max_failures
        self.stop_grace_seconds = stop_grace_seconds
        self.failures = 0
        self._metrics_keys: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------ public
    def run(self, case_ids: list[str]) -> None:
        """Run the given cases in order. Raises SweepInterrupted on Ctrl-C and ArcherError when
        --max-failures is reached; sweep.json is consistent in every case."""
        try:
            with _signals_as_interrupt():
                self._run(case_ids)
        except KeyboardInterrupt:  # between cases (a running case is handled in _attempt)
            for c in self.sweep.cases:
                if c.status == RUNNING:
                    c.status, c.reason = INTERRUPTED, "interrupted (Ctrl-C)"
            self.sweep.status = INTERRUPTED
            self.sweep.save()
            raise SweepInterrupted(
                "sweep interrupted", hint=f"continue with: archer ablate --resume --out {self.sweep.dir}"
            ) from None

    def _run(self, case_ids: list[str]) -> None:
        sweep = self.sweep
        sweep.status = RUNNING
        sweep.save()
        self.display.event(sweep, None, "sweep-start")
        for i, cid in enumerate(case_ids):
            rec = sweep.case(cid)
            self._run_case(rec)
            if rec.status == FAILED:
                self.failures += 1
                if self.max_failures is not None and self.failures >= self.max_failures:
                    left = [c for c in case_ids[i + 1 :]]
                    sweep.status = "stopped"
                    sweep.save()
                    self.display.event(sweep, None, "sweep-end")
                    raise ArcherError(
                        f"stopped after {self.failures} failed case(s) (--max-failures {self.max_failures}); "
                        f"{len(left)} case(s) not run",
                        hint=(
                            f"see each failed case's {LOG_FILE}; continue with: archer ablate --resume "
                            f"--out {sweep.dir}"
                        ),
                    )
        sweep.status = "finished"
        sweep.save()
        self.display.event(sweep, None, "sweep-end")

    # ------------------------------------------------------------------ one case
    def _run_case(self, rec: CaseRecord) -> None:
        case_dir = self.sweep.case_dir(rec)
        last = rec.attempts[-1] if rec.attempts else None
        # An interrupted run continues from its checkpoint; anything else starts afresh.
        resume = rec.status in (INTERRUPTED, RUNNING) and (case_dir / CONFIG_FILE).exists()
        extra: list[str] = []
        offload = bool(resume and last is not None and last.offload)
        retried = False
        while True:
            att = self._attempt(rec, extra, resume=resume, offload=offload)
            if att.interrupted:
                rec.status, rec.reason = INTERRUPTED, "interrupted (Ctrl-C)"
                self._finish(rec)
                self.sweep.status = INTERRUPTED
                self.sweep.save()
                self.display.event(self.sweep, rec, "interrupted")
                raise SweepInterrupted(
                    f"sweep interrupted during case {rec.id}",
                    hint=f"continue with: archer ablate --resume --out {self.sweep.dir}",
                )
            if att.returncode == 0:
                rec.status, rec.reason = DONE, None
                break
            can_offload = rec.influence and not rec.offload and not offload
            if att.oom and can_offload and not retried:
                retried, offload, resume, extra = True, True, False, [OFFLOAD_OVERRIDE]
                rec.reason = f"out of memory; retrying once with {OFFLOAD_OVERRIDE}"
                self.sweep.save()
                self.display.event(self.sweep, rec, "retry", rec.reason)
                continue
            rec.status, rec.reason = FAILED, att.reason
            break
        self._finish(rec)
        self.display.event(self.sweep, rec, rec.status)

    def _finish(self, rec: CaseRecord) -> None:
        rec.oom = any(a.oom for a in rec.attempts)
        rec.ended = now()
        rec.seconds = round(sum(a.seconds or 0.0 for a in rec.attempts), 3)
        self.sweep.save()

    def _attempt(self, rec: CaseRecord, extra: list[str], *, resume: bool, offload: bool) -> Attempt:
        sweep = self.sweep
        case_dir = sweep.case_dir(rec)
        n = len(rec.attempts) + 1
        _prepare_case_dir(case_dir, n, keep_run=resume)
        cmd = self.command(sweep, rec, [*sweep.overrides, *rec.overrides, *extra], resume)
        att = Attempt(n=n, started=now(), command=cmd, offload=offload, resumed=resume, log=LOG_FILE)
        rec.attempts.append(att)
        rec.status = RUNNING
        rec.started = rec.started or att.started
        if not resume:
            rec.steps, rec.step_seconds = 0, None
        sweep.save()
        self.display.event(sweep, rec, "start")
        t0 = time.monotonic()
        log_path = case_dir / LOG_FILE
        proc: subprocess.Popen | None = None
        try:
            with open(log_path, "ab") as log:
                log.write(
                    f"# archer ablate: case {rec.id}, attempt {n}, {att.started}\n# {_quote(cmd)}\n".encode()
                )
                log.flush()
                try:
                    proc = subprocess.Popen(
                        cmd,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=self.env,
                        # Ctrl-C reaches the sweep only; it decides what the case gets
                        start_new_session=True,
                    )
                except OSError as e:
                    att.returncode, att.reason = 127, f"cannot start {cmd[0]}: {e}"
                else:
                    att.pid = proc.pid
                    sweep.save()
                    try:
                        att.returncode = self._wait(proc, rec, case_dir)
                    except KeyboardInterrupt:
                        att.interrupted = True
                        att.returncode = self._stop(proc, rec)
        finally:
            if (
                proc is not None and proc.poll() is None
            ):  # an error in the sweep itself: never leave a child behind
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
        att.ended = now()
        att.seconds = round(time.monotonic() - t0, 3)
        self._poll_progress(rec, case_dir)
        if att.interrupted:
            att.reason = "interrupted (Ctrl-C)"
        elif att.returncode != 0:
            lines = read_tail(log_path)
            att.oom = is_oom(lines, att.returncode)
            att.reason = att.reason or failure_reason(lines, att.returncode)
        sweep.save()
        return att

    def _wait(self, proc: subprocess.Popen, rec: CaseRecord, case_dir: Path) -> int:
        while True:
            try:
                return proc.wait(timeout=self.poll_seconds)
            except subprocess.TimeoutExpired:
                pass
            if self._poll_progress(rec, case_dir):
                self.sweep.save()
            self.display.event(self.sweep, rec, "progress")

    def _stop(self, proc: subprocess.Popen, rec: CaseRecord) -> int:
        """SIGINT to the case (it checkpoints and exits), SIGTERM after the grace period, then
        SIGKILL; a second Ctrl-C skips straight to SIGKILL."""
        self.display.event(
            self.sweep,
            rec,
            "stopping",
            f"stopping case {rec.id} (it may save a checkpoint; Ctrl-C again to kill it now)",
        )
        try:
            _kill_group(proc, signal.SIGINT)
            try:
                return proc.wait(timeout=self.stop_grace_seconds)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGTERM)
                try:
                    return proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        except KeyboardInterrupt:
            pass
        _kill_group(proc, signal.SIGKILL)
        return proc.wait()

    def _poll_progress(self, rec: CaseRecord, case_dir: Path) -> bool:
        """Update the case's last step and s/step from its metrics.jsonl; True if they changed."""
        path = case_dir / METRICS_FILE
        try:
            st = path.stat()
        except OSError:
            return False
        key = (st.st_size, st.st_mtime_ns)
        if self._metrics_keys.get(rec.id) == key:
            return False
        self._metrics_keys[rec.id] = key
        from archer.core.metrics import read_metrics

        rows = [r for r in read_metrics(case_dir) if int(r.get("step", 0) or 0) > 0]
        if not rows:
            return False
        last = rows[-1]
        steps, secs = int(last["step"]), last.get("time/step")
        changed = (steps, secs) != (rec.steps, rec.step_seconds)
        rec.steps, rec.step_seconds = steps, secs
        return changed


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal, `kill`) stop the sweep the way Ctrl-C does, so the
    running case is stopped too instead of being left orphaned in its own session."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _quote(cmd: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(c) for c in cmd)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the case's process group (its reward workers and loaders too), only ours."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _prepare_case_dir(case_dir: Path, attempt: int, *, keep_run: bool) -> None:
    """Keep earlier attempts' logs as train.attemptN.log; a fresh attempt also removes what the
    previous one left (config, checkpoints, trace) so `archer train` starts on an empty run."""
    case_dir.mkdir(parents=True, exist_ok=True)
    log = case_dir / LOG_FILE
    if log.exists():
        log.rename(case_dir / f"train.attempt{attempt - 1}.log")
    if keep_run:
        return
    for entry in case_dir.iterdir():
        if re.fullmatch(r"train(\.attempt\d+)?\.log", entry.name) or entry.name == RUN_LOCK:
            continue  # a lock file is never removed: a live holder would lose its exclusion
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def cases_to_run(sweep: Sweep, wanted: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(case ids to run now, ids skipped as done), in sweep order, among `wanted` (default: all).
    Done cases whose run directory is gone run again."""
    run, skipped = [], []
    for c in sweep.cases:
        if wanted is not None and c.id not in wanted:
            continue
        if c.status == DONE and (sweep.case_dir(c) / CONFIG_FILE).exists():
            skipped.append(c.id)
        else:
            if c.status == DONE:
                c.status, c.reason = PENDING, "run directory was removed; running it again"
            run.append(c.id)
    return run, skipped


def still_running(sweep: Sweep, rec: CaseRecord) -> int | None:
    """The pid of a case process that outlived a killed sweep (it runs in its own session), if any:
    alive, and its command line names the case's directory."""
    if rec.status != RUNNING or not rec.attempts or rec.attempts[-1].pid is None:
        return None
    pid = rec.attempts[-1].pid
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return pid if str(sweep.case_dir(rec).resolve()) in cmdline else None


def check_no_orphans(sweep: Sweep) -> None:
    """Refuse to run a sweep while a case process of an earlier, killed sweep still works on it."""
    from archer.errors import UsageError

    for c in sweep.cases:
        pid = still_running(sweep, c)
        if pid is not None:
            raise UsageError(
                f"case {c.id} is still running as process {pid} (left by a sweep that was killed)",
                hint=f"wait for it or stop it (kill {pid}), then resume",
            )
