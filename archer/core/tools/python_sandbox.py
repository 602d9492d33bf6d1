"""The Python tool: run model-written code in a locked-down subprocess and return what it printed.

ARPO's original tool ran `python -c code` with only a timeout. Here every call gets a fresh
interpreter in a new session with a wall-clock timeout (the whole process group is killed), CPU,
memory, process-count and file-size rlimits, an empty temporary working directory (removed
afterwards), a scrubbed environment and output truncated to a cap. Network and filesystem
isolation come from Linux namespaces where the kernel allows them, otherwise from an audit hook
in the child; `_sandbox_boot.py` has the details and every result says which one ran.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOOT_SOURCE = (Path(__file__).with_name("_sandbox_boot.py")).read_text()
# Imported before any privilege drop, so they work even where the sandbox uid cannot read the
# interpreter's files (as root with Python under /root, say). Others import normally when readable.
DEFAULT_PRELOAD = (
    "math",
    "cmath",
    "fractions",
    "decimal",
    "statistics",
    "random",
    "itertools",
    "functools",
    "operator",
    "collections",
    "heapq",
    "bisect",
    "re",
    "json",
    "string",
    "datetime",
    "time",
    "socket",
    "traceback",
    "ast",
)
SIGNAL_NAMES = {
    signal.SIGXCPU: "cpu_limit",
    signal.SIGKILL: "killed",
    signal.SIGXFSZ: "file_limit",
    signal.SIGSEGV: "crashed",
}


@dataclass(frozen=True)
class SandboxLimits:
    """Per-call limits; every one is enforced by the kernel or by killing the process group."""

    timeout_s: float = 5.0
    cpu_s: int = 2
    memory_mb: int = 512
    max_processes: int = 16
    max_file_mb: int = 16
    max_output_chars: int = 1000


@dataclass
class ToolResult:
    """What a tool call produced: `text` is what the model sees between <result> tags."""

    text: str
    status: str  # ok | error | timeout | cpu_limit | memory_limit | file_limit | killed | crashed
    seconds: float = 0.0
    truncated: bool = False
    isolation: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def scrubbed_env(workdir: str) -> dict[str, str]:
    """The child's whole environment: nothing of the trainer's (no tokens, no proxies)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


class PythonSandbox:
    """Runs code with `run(code)`; thread-safe. `cache_size` > 0 keeps the results of identical code
    (the tool is stateless and the same prompt's rollouts often write the same code)."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        python: str | None = None,
        namespaces: bool = True,
        preload: tuple[str, ...] = DEFAULT_PRELOAD,
        cache_size: int = 0,
    ):
        self.limits = limits or SandboxLimits()
        self.python = python or sys.executable
        self.namespaces = namespaces
        self.preload = tuple(preload)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, ToolResult] = OrderedDict()
        self._lock = threading.Lock()
        self.isolation: dict[str, Any] = {}

    def run(self, code: str) -> ToolResult:
        if self.cache_size:
            with self._lock:
                hit = self._cache.get(code)
                if hit is not None:
                    self._cache.move_to_end(code)
                    return ToolResult(hit.text, hit.status, 0.0, hit.truncated, hit.isolation, cached=True)
        result = self._run(code)
        if self.cache_size and result.status in ("ok", "error"):  # limits depend on the machine's load
            with self._lock:
                self._cache[code] = result
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    def probe(self) -> dict[str, Any]:
        """Which isolation actually runs here (runs `pass` once)."""
        return self._run("pass").isolation

    # ------------------------------------------------------------------ one call
    def _run(self, code: str) -> ToolResult:
        lim = self.limits
        t0 = time.monotonic()
        work = tempfile.mkdtemp(prefix="archer-py-")
        os.chmod(work, 0o755)
        status_r, status_w = os.pipe()
        request = json.dumps(
            {
                "code": code,
                "workdir": work,
                "namespaces": self.namespaces,
                "preload": list(self.preload),
                "limits": {
                    "cpu_s": lim.cpu_s,
                    "memory_mb": lim.memory_mb,
                    "max_processes": lim.max_processes,
                    "max_file_mb": lim.max_file_mb,
                },
            }
        )
        proc = None
        out = bytearray()
        cap = lim.max_output_chars * 4 + 64  # bytes; decoded and cut to characters below
        overflow = False
        events: list[dict[str, Any]] = []
        timed_out = False
        try:
            proc = subprocess.Popen(
                [self.python, "-I", "-B", "-c", BOOT_SOURCE, str(status_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(status_w,),
                cwd=work,
                env=scrubbed_env(work),
                start_new_session=True,
            )
            os.close(status_w)
            status_w = -1
            try:
                proc.stdin.write(request.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            deadline = t0 + lim.timeout_s
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ, "out")
            sel.register(status_r, selectors.EVENT_READ, "status")
            status_buf = bytearray()
            exited_at = None
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > 0.5:  # leftovers holding the pipe open
                    break
                for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                    fd = key.fileobj if isinstance(key.fileobj, int) else key.fileobj.fileno()
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    if key.data == "out":
                        room = cap - len(out)
                        if room > 0:
                            out += chunk[:room]
                        overflow = overflow or len(chunk) > room
                    else:
                        status_buf += chunk
            sel.close()
            for line in status_buf.decode(errors="replace").splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
        finally:
            if proc is not None:
                _kill_group(proc.pid)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                if proc.stdout is not None:
                    proc.stdout.close()
            if status_w >= 0:
                os.close(status_w)
            os.close(status_r)
            shutil.rmtree(work, ignore_errors=True)
        return self._result(out, overflow, events, timed_out, time.monotonic() - t0)

    def _result(
        self, out: bytes, overflow: bool, events: list[dict[str, Any]], timed_out: bool, seconds: float
    ) -> ToolResult:
        lim = self.limits
        ready = next((e for e in events if e.get("event") == "ready"), {})
        isolation = {k: ready[k] for k in ("isolation", "mechanisms", "notes", "readonly") if k in ready}
        if isolation:
            self.isolation = isolation
        exit_ = next((e for e in events if e.get("event") == "exit"), None)
        text = out.decode("utf-8", errors="replace")
        truncated = overflow or len(text) > lim.max_output_chars
        text = text[: lim.max_output_chars].rstrip("\n")
        if timed_out:
            status, note = "timeout", f"TimeoutError: stopped after {lim.timeout_s:g}s of wall-clock time"
        elif exit_ is None:
            status, note = "killed", "sandbox: the interpreter stopped before the code finished"
        elif exit_.get("signal"):
            sig = int(exit_["signal"])
            status = SIGNAL_NAMES.get(sig, "killed")
            if status == "cpu_limit":
                note = f"TimeoutError: stopped after {lim.cpu_s}s of CPU time"
            elif status == "file_limit":
                note = f"sandbox: file size limit ({lim.max_file_mb} MiB) exceeded"
            else:
                note = f"sandbox: killed by signal {signal.Signals(sig).name}"
        elif exit_.get("code") == 0:
            status, note = "ok", ""
        else:
            status, note = "error", ""
            if "MemoryError" in text:
                status, note = "memory_limit", f"(memory limit {lim.memory_mb} MiB)"
        parts = [text] if text else []
        if note:
            parts.append(note)
        if truncated:
            parts.append(f"[output truncated to {lim.max_output_chars} characters]")
        final = "\n".join(parts) if parts else "(no output)"
        return ToolResult(final, status, seconds, truncated, isolation)


def _kill_group(pgid: int) -> None:
    """SIGKILL the sandbox's process group (its session leader's pid is the group id)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
