"""The Python tool: run model-written code in a sandbox and return what it printed.

ARPO's original tool ran `python -c code` with only a timeout. Here every call gets a fresh
interpreter inside bubblewrap (`bwrap`, a maintained, setuid-free sandboxing tool from the
Flatpak project): its own mount view (the interpreter's files read-only, a fresh size-limited
tmpfs as working directory, nothing else of the host: no /tmp, /run, $HOME, /etc, sockets), its
own /proc in a new pid namespace, no network (new network namespace plus a seccomp filter that
refuses every socket), no new privileges, and a seccomp filter built by libseccomp (`_seccomp`).
CPU, memory, process-count and file-size rlimits, a wall-clock timeout that takes the whole
namespace down, a scrubbed environment and an output cap apply on top. docs/security.md has the
threat model and what each mode holds.

Without a sandbox that holds, `PythonSandbox` refuses to run code (`SandboxUnavailable`, naming
the fix) unless the user opted in to `isolation="none"`, which runs the code unisolated with
only limits and an accident guard (unsafe; the engine warns at every start).
"""

from __future__ import annotations

import functools
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

from archer.errors import ArcherError, ConfigError

BOOT_SOURCE = (Path(__file__).with_name("_sandbox_boot.py")).read_text()
# Imported before the code runs (and, as root, before the drop to SANDBOX_UID), so the common
# stdlib is ready even on a loaded machine. Others import normally.
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


ISOLATION_MODES = ("bwrap", "none")
SANDBOX_UID = 65534  # "nobody": the code's uid when archer runs as root
SANDBOX_WORKDIR = "/sandbox"  # the working directory inside bwrap (a fresh tmpfs)
ISOLATION_KEY = "agent.tools.python.isolation"


class SandboxUnavailable(ArcherError):
    """No sandbox that holds can be set up here; tools are refused (the hint names the fix)."""


def _unsafe_hint(key: str) -> str:
    return (
        f"or, knowing that model-written code then runs with all of your user's rights, set {key}=none"
        " (unsafe; see docs/security.md)"
    )


@functools.lru_cache(maxsize=8)
def interpreter_paths(python: str) -> tuple[str, ...]:
    """Directories the sandbox must show read-only for `python -I` to start and import its
    stdlib and site-packages: its prefixes and the sys.path entries under them (a path a .pth
    file adds elsewhere, such as an editable install's source tree, is deliberately left out)."""
    probe = (
        "import json, os, sys\n"
        "pre = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,"
        " sys.base_exec_prefix)}\n"
        "pre |= {p for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}\n"
        "exe = os.path.realpath(sys.executable)\n"
        "paths = [p for p in sys.path if p and os.path.isdir(p)"
        " and any(os.path.realpath(p).startswith(q.rstrip('/') + '/') for q in pre)]\n"
        "print(json.dumps(sorted(pre | {os.path.dirname(exe)} | set(paths))))\n"
    )
    try:
        out = subprocess.run(
            [python, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        return tuple(json.loads(out))
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise SandboxUnavailable(f"cannot start the sandbox's interpreter {python}: {e}") from e


def _cover(paths: list[str]) -> list[str]:
    """The outermost of `paths` (a path under another one is already shown by it)."""
    out: list[str] = []
    for p in sorted({os.path.normpath(p) for p in paths}):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def bwrap_argv(bwrap: str, python: str, limits: SandboxLimits, seccomp_fd: int, as_root: bool) -> list[str]:
    """The bubblewrap command line (everything before `--`)."""
    argv = [bwrap]
    if as_root:  # real root: no user namespace; the boot drops to SANDBOX_UID with these two caps
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:  # an unprivileged user namespace; a nested one (--disable-userns) can make no more
        argv += ["--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            argv += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            argv += ["--ro-bind", host, host]
    argv += ["--perms", "0755", "--dir", "/etc"]  # only what the dynamic loader and time zones read
    for f in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"):
        argv += ["--ro-bind-try", f, f]
    shown = [p for p in _cover(list(interpreter_paths(python))) if not (p + "/").startswith("/usr/")]
    parents = sorted({str(a) for p in shown for a in Path(p).parents if str(a) != "/"}, key=len)
    for d in parents:  # bwrap would create them 0700, which the sandbox uid could not enter
        argv += ["--perms", "0755", "--dir", d]
    for p in shown:
        argv += ["--ro-bind", p, p]
    size = int(limits.max_file_mb) * 4 * 2**20
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "01777", "--size", str(size), "--tmpfs", SANDBOX_WORKDIR]
    if not any(p == "/tmp" or p.startswith("/tmp/") for p in shown):
        # /tmp is the work dir; where the interpreter itself lives under /tmp (a venv there), /tmp
        # holds its read-only bind instead and TMPDIR still points at the work dir
        argv += ["--symlink", SANDBOX_WORKDIR, "/tmp"]
    argv += ["--remount-ro", "/", "--chdir", SANDBOX_WORKDIR, "--clearenv"]
    for k, v in scrubbed_env(SANDBOX_WORKDIR).items():
        argv += ["--setenv", k, v]
    argv += ["--seccomp", str(seccomp_fd)]
    return argv


def count_tasks_of(uid: int) -> int:
    """Threads of `uid` on this machine (RLIMIT_NPROC counts them all, outside a user namespace)."""
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                pass
    return n


class PythonSandbox:
    """Runs code with `run(code)`; thread-safe. `cache_size` > 0 keeps the results of identical code
    (the tool is stateless and the same prompt's rollouts often write the same code).

    `isolation`: "bwrap" (the default; raises `SandboxUnavailable` where bubblewrap cannot set up
    the sandbox) or "none" (no isolation at all: the user's explicit, unsafe opt-in).
    `isolation_key` is the config key the errors name."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        python: str | None = None,
        isolation: str = "bwrap",
        preload: tuple[str, ...] = DEFAULT_PRELOAD,
        cache_size: int = 0,
        isolation_key: str = ISOLATION_KEY,
        bwrap: str | None = None,
    ):
        if isolation not in ISOLATION_MODES:
            raise ConfigError(
                f"{isolation_key}={isolation!r} is not a sandbox mode",
                hint=f"use one of: {', '.join(ISOLATION_MODES)}",
            )
        self.limits = limits or SandboxLimits()
        self.python = python or sys.executable
        self.mode = isolation
        self.isolation_key = isolation_key
        self.bwrap = bwrap
        self.preload = tuple(preload)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, ToolResult] = OrderedDict()
        self._lock = threading.Lock()
        self.isolation: dict[str, Any] = {}

    @property
    def unsafe(self) -> bool:
        return self.mode == "none"

    def run(self, code: str) -> ToolResult:
        """Run `code`; raises `SandboxUnavailable` (never runs it) where the sandbox cannot hold."""
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
        """Which isolation runs here (runs `pass` once); raises `SandboxUnavailable` if none holds."""
        return self._run("pass").isolation

    # ------------------------------------------------------------------ set-up
    def _bwrap_path(self) -> str:
        path = self.bwrap or shutil.which("bwrap")
        if not path or not os.access(path, os.X_OK):
            raise SandboxUnavailable(
                "the python tool needs bubblewrap (bwrap) to isolate model-written code, and "
                + (f"{self.bwrap} is not an executable" if self.bwrap else "it is not installed"),
                hint="install it: apt-get install bubblewrap (Debian/Ubuntu; dnf install bubblewrap on "
                f"Fedora); {_unsafe_hint(self.isolation_key)}",
            )
        return path

    def _command(self, status_w: int, seccomp_fd: int, work: str) -> tuple[list[str], dict[str, Any]]:
        """(argv, request fields) for one call."""
        boot = [self.python, "-I", "-B", "-c", BOOT_SOURCE, str(status_w)]
        if self.mode == "none":
            return boot, {"workdir": work, "mechanisms": ["rlimits", "audit-hook"], "nproc_base": 0}
        as_root = os.geteuid() == 0
        argv = bwrap_argv(self._bwrap_path(), self.python, self.limits, seccomp_fd, as_root)
        mechanisms = ["bwrap", "mountns-minimal", "tmpfs-workdir", "pidns", "netns", "ipcns", "utsns"]
        mechanisms += [f"uid{SANDBOX_UID}" if as_root else "userns", "seccomp", "no-new-privs", "rlimits"]
        request = {
            "workdir": SANDBOX_WORKDIR,
            "mechanisms": mechanisms,
            "drop_to": SANDBOX_UID if as_root else None,
            # as root the code's uid is shared with every other "nobody" process on the machine
            "nproc_base": count_tasks_of(SANDBOX_UID) if as_root else 0,
        }
        return [*argv, "--", *boot], request

    # ------------------------------------------------------------------ one call
    def _run(self, code: str) -> ToolResult:
        lim = self.limits
        t0 = time.monotonic()
        work = tempfile.mkdtemp(prefix="archer-py-") if self.mode == "none" else ""
        status_r, status_w = os.pipe()
        seccomp_fd = -1
        proc = None
        out = bytearray()
        cap = lim.max_output_chars * 4 + 64  # bytes; decoded and cut to characters below
        overflow = False
        events: list[dict[str, Any]] = []
        timed_out = False
        try:
            if self.mode == "bwrap":
                from archer.core.tools._seccomp import filter_program

                program = filter_program()
                seccomp_fd = os.memfd_create("archer-seccomp", os.MFD_CLOEXEC)
                os.write(seccomp_fd, program)
                os.lseek(seccomp_fd, 0, os.SEEK_SET)
            argv, fields = self._command(status_w, seccomp_fd, work)
            request = json.dumps(
                {
                    "code": code,
                    "mode": self.mode,
                    "preload": list(self.preload),
                    "limits": {
                        "cpu_s": lim.cpu_s,
                        "memory_mb": lim.memory_mb,
                        "max_processes": lim.max_processes,
                        "max_file_mb": lim.max_file_mb,
                    },
                    **fields,
                }
            )
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(status_w,) if seccomp_fd < 0 else (status_w, seccomp_fd),
                cwd=work or "/",
                env=scrubbed_env(work or SANDBOX_WORKDIR),  # bwrap's own environ holds no secret either
                start_new_session=True,
            )
            os.close(status_w)
            status_w = -1
            if seccomp_fd >= 0:
                os.close(seccomp_fd)
                seccomp_fd = -1
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
                if self.mode == "none":
                    _kill_tree(proc.pid)
                _kill_group(proc.pid)  # bwrap's init dies with it (--die-with-parent): the namespace goes
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                if proc.stdout is not None:
                    proc.stdout.close()
            for fd in (status_w, seccomp_fd, status_r):
                if fd >= 0:
                    os.close(fd)
            if work:
                shutil.rmtree(work, ignore_errors=True)
        if not timed_out and not any(e.get("event") == "ready" for e in events):
            self._setup_failed(out.decode("utf-8", errors="replace").strip(), proc)
        return self._result(out, overflow, events, timed_out, time.monotonic() - t0)

    def _setup_failed(self, text: str, proc: subprocess.Popen | None) -> None:
        """The sandbox never reached the code: an environment problem, not the model's."""
        detail = text.splitlines()[-1] if text else f"exit status {proc.returncode if proc else '?'}"
        if self.mode == "bwrap":
            raise SandboxUnavailable(
                f"bubblewrap cannot set up the python tool's sandbox here: {detail}",
                hint="unprivileged bwrap needs user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                "user.max_user_namespaces > 0); a container must allow them (docker: --security-opt "
                f"seccomp=unconfined --security-opt apparmor=unconfined); {_unsafe_hint(self.isolation_key)}",
            )
        raise SandboxUnavailable(f"the python tool's interpreter {self.python} did not start: {detail}")

    def _result(
        self, out: bytes, overflow: bool, events: list[dict[str, Any]], timed_out: bool, seconds: float
    ) -> ToolResult:
        lim = self.limits
        ready = next((e for e in events if e.get("event") == "ready"), {})
        isolation = {k: ready[k] for k in ("isolation", "mechanisms", "notes") if k in ready}
        if isolation:
            if self.unsafe:
                isolation["unsafe"] = True
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


def _descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _kill_tree(root: int) -> None:
    """ "none" mode: stop, then kill, every descendant of the boot (its orphans were re-parented
    to it, a child subreaper) before the boot itself, so nothing that left the session survives."""
    for _ in range(20):
        kids = _descendants(root)
        if not kids:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in kids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
