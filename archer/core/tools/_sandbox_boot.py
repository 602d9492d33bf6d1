"""Bootstrap of the Python tool's sandbox: runs as `python -I -B -c <this source> <status_fd>`.

It is never imported by archer; `python_sandbox` reads this file and passes its text to a fresh
interpreter. Standard library only. Protocol: a JSON request on stdin ({"code", "limits", "mode",
"workdir", "drop_to", "nproc_base", "preload"}); JSON lines on the status fd: {"event": "ready",
...} before the code runs, {"event": "exit", "code"|"signal": ...} after. The code's stdout and
stderr go to this process's stdout. The code runs in a forked child that no longer holds the
status fd, so it cannot forge the report.

The isolation itself is not here (see docs/security.md):
- mode "bwrap": this process already runs inside bubblewrap (own mount view, pid, network, ipc
  and uts namespaces, seccomp filter, no new privileges). Started by root, bubblewrap keeps
  CAP_SETUID/CAP_SETGID for this process only so that it drops to `drop_to` (uid 65534) here,
  before any model code runs: RLIMIT_NPROC does not apply to uid 0, so the fork-bomb limit
  needs another uid. After the code's process exits, everything it left in the pid namespace is
  killed (kill(-1) reaches every process of the namespace but bwrap's init and this one).
- mode "none" (the user's explicit opt-in, unsafe): rlimits, a child-subreaper cleanup and an
  audit hook that refuses the obvious (sockets, writes outside the work dir, process creation).
  A Python hook is a guard against accidents, never a security boundary.
"""

import json
import os
import resource
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def drop_privileges(uid):
    """Become `uid` with no groups and no capabilities left (checked, not assumed)."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    with open("/proc/self/status") as f:
        caps = {k: v.strip() for k, _, v in (line.partition(":") for line in f) if k.startswith("Cap")}
    if int(caps.get("CapEff", "1"), 16) or int(caps.get("CapPrm", "1"), 16):
        raise OSError(f"capabilities remain after dropping to uid {uid}: {caps}")


# ------------------------------------------------------------------ the "none" mode's guard
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = {
    "os.remove",
    "os.rename",
    "os.mkdir",
    "os.rmdir",
    "os.chmod",
    "os.chown",
    "os.link",
    "os.truncate",
    "os.utime",
    "os.mkfifo",
    "os.mknod",
    "shutil.rmtree",
    "shutil.copyfile",
    "shutil.copytree",
    "shutil.move",
    "os.chflags",
    "os.setxattr",
    "os.removexattr",
}
DENIED = {
    "os.fork",
    "os.forkpty",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "subprocess.Popen",
    "os.kill",
    "os.killpg",
    "signal.pthread_kill",
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.cdata",
    "ctypes.call_function",
    "os.symlink",
    "sqlite3.connect",
    "os.chroot",
    "mmap.__new__",
}


def install_guard(work):
    """An audit hook that refuses what generated code should not do by accident."""
    work = os.path.normpath(work)

    def inside(path):
        if isinstance(path, int):
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        full = os.path.normpath(os.path.join(os.getcwd(), os.fspath(path)))
        return full == work or full.startswith(work + os.sep)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if writing and path is not None and not inside(path):
                raise PermissionError(
                    f"sandbox: writing outside the working directory is not allowed: {path}"
                )
        elif event in PATH_EVENTS:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                    raise PermissionError(
                        f"sandbox: changing files outside the working directory is not allowed: {a}"
                    )
        elif event.startswith("socket."):
            raise PermissionError("sandbox: network access is disabled")
        elif event in DENIED:
            raise PermissionError(f"sandbox: {event} is not allowed")

    sys.addaudithook(hook)


# ------------------------------------------------------------------ running the code
def set_limits(limits, nproc_base):
    cpu = max(1, int(limits["cpu_s"]))
    mem = int(limits["memory_mb"]) * 2**20
    fsize = int(limits["max_file_mb"]) * 2**20
    nproc = int(limits["max_processes"]) + int(nproc_base)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_code(req, guarded):
    import ast
    import traceback

    code = req["code"]
    try:
        tree = ast.parse(code, "<python>", "exec")
        if tree.body and isinstance(tree.body[-1], ast.Expr):  # a bare last expression is printed
            last = tree.body[-1]
            call = last.value
            is_print = (
                isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print"
            )
            if not is_print:
                tree.body[-1] = ast.copy_location(
                    ast.Expr(ast.Call(ast.Name("print", ast.Load()), [call], [])), last
                )
                ast.fix_missing_locations(tree)
        compiled = compile(tree, "<python>", "exec")
    except SyntaxError as e:
        sys.stderr.write(traceback.format_exception_only(type(e), e)[-1])
        return 1
    if guarded:
        install_guard(req["workdir"])
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compiled, scope)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # noqa: BLE001 - the code's own error is the tool's answer
        sys.stdout.flush()
        sys.stderr.write(traceback.format_exception_only(type(e), e)[-1])
        return 1
    return 0


def child_main(req, guarded):
    try:
        os.chdir(req["workdir"])
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
        set_limits(req["limits"], req.get("nproc_base", 0))
        code = run_code(req, guarded)
    except BaseException as e:  # noqa: BLE001
        sys.stderr.write(f"sandbox: {type(e).__name__}: {e}\n")
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)


def wait_status(pid):
    """Reap `pid`; (exit code, signal number)."""
    while True:
        try:
            _, st = os.waitpid(pid, 0)
        except ChildProcessError:
            return 1, None
        if os.WIFEXITED(st):
            return os.WEXITSTATUS(st), None
        if os.WIFSIGNALED(st):
            return None, os.WTERMSIG(st)


def own_children():
    """Pids whose parent is this process (orphans come here: it is a child subreaper)."""
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                out.append(int(name))
    return out


def kill_leftovers(namespaced):
    """Kill what the code left running: the whole pid namespace (bwrap), or every descendant
    that was re-parented to this subreaper ("none" mode; stopped first so none can fork)."""
    if namespaced:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        for _ in range(100):
            kids = own_children()
            if not kids:
                break
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in kids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def main():
    status_fd = int(sys.argv[1])
    req = json.loads(sys.stdin.read())
    for name in req.get("preload", []):  # before any privilege drop
        try:
            __import__(name)
        except Exception:  # noqa: BLE001
            pass
    namespaced = req["mode"] == "bwrap"
    info = {"isolation": req["mode"], "mechanisms": list(req.get("mechanisms", [])), "notes": []}
    if namespaced and req.get("drop_to") is not None:
        drop_privileges(int(req["drop_to"]))
    if not namespaced:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    os.write(status_fd, (json.dumps({"event": "ready", **info}) + "\n").encode())
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        child_main(req, guarded=not namespaced)
    code, sig = wait_status(pid)
    kill_leftovers(namespaced)
    os.write(status_fd, (json.dumps({"event": "exit", "code": code, "signal": sig}) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
