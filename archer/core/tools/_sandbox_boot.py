"""Bootstrap of the Python tool's sandbox: runs as `python -I -B -c <this source> <status_fd>`.

It is never imported by archer; `python_sandbox` reads this file and passes its text to a fresh
interpreter in a new session. Standard library only, and single-threaded until it forks, so the
namespace calls below are safe. Protocol: a JSON request on stdin ({"code", "limits", "workdir",
"namespaces", "preload"}); JSON lines on the status fd: {"event": "ready", "isolation": {...}}
before the code runs, {"event": "exit", "code"|"signal": ...} after. The code's stdout and stderr
go to this process's stdout.

Isolation, strongest first (what ran is reported in "isolation"):
- namespaces: new mount, network, pid, ipc and uts namespaces. Every mount is made read-only and
  the working directory is a fresh size-limited tmpfs, so writes outside it fail with EROFS; the
  network namespace has no interface up; the code runs in a pid namespace whose init exits with
  it, so the kernel kills every process it left. As root, the code runs as uid 65534 (RLIMIT_NPROC
  does not apply to root), inside a nested user namespace so the process limit is its own;
  directories the interpreter needs but uid 65534 cannot traverse are exposed through tmpfs shadows.
  As another user, a user namespace provides the privileges, and a second one drops them again so
  the code cannot remount anything.
- audit-hook (when namespaces are unavailable): rlimits, plus a Python audit hook that refuses
  sockets, writes outside the working directory, process creation, signals and ctypes. A hook is
  a guard for generated code, not a security boundary.
"""

import ctypes
import json
import os
import resource
import signal
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
MNT_DETACH = 2
SANDBOX_UID = 65534
PR_SET_DUMPABLE = 4

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
        ]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc.unshare.argtypes = [ctypes.c_int]
    return _libc


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    check(libc().mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def unshare(flags, what):
    check(libc().unshare(flags), f"unshare({what})")


def write_maps(inside_uid_map, inside_gid_map):
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(inside_uid_map)
    with open("/proc/self/gid_map", "w") as f:
        f.write(inside_gid_map)


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def make_everything_readonly():
    """Every mount read-only except /proc (a user namespace's maps are written there, and /proc
    itself guards what an unprivileged process may change): mount_setattr(AT_RECURSIVE) on
    Linux 5.12+, otherwise a remount per mount point."""
    nr = {"x86_64": 442, "aarch64": 442}.get(os.uname().machine)
    if nr is not None:
        ro = MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
        if libc().syscall(nr, -100, b"/", 0x8000, ctypes.byref(ro), ctypes.sizeof(ro)) == 0:
            rw = MountAttr(0, 1, 0, 0)
            check(
                libc().syscall(nr, -100, b"/proc", 0, ctypes.byref(rw), ctypes.sizeof(rw)),
                "mount_setattr /proc",
            )
            return "mount_setattr"
    keep = {
        "nosuid": MS_NOSUID,
        "nodev": MS_NODEV,
        "noexec": MS_NOEXEC,
        "noatime": 1024,
        "nodiratime": 2048,
        "relatime": 1 << 21,
    }
    with open("/proc/self/mountinfo") as f:
        points = [(line.split()[4], line.split()[5]) for line in f]
    for point, opts in sorted(points, key=lambda p: len(p[0]), reverse=True):
        if point == "/proc":
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts.split(","):
            flags |= keep.get(o, 0)
        mount(None, point.encode().decode("unicode_escape"), None, flags)
    return "remount"


def untraversable(paths, uid):
    """(ancestor, child) pairs: directories on the way to `paths` that `uid` cannot enter."""
    out = {}
    for p in paths:
        parts = os.path.realpath(p).strip("/").split("/")
        cur = "/"
        for i, part in enumerate(parts[:-1] if len(parts) > 1 else []):
            cur = os.path.join(cur, part)
            try:
                st = os.stat(cur)
            except OSError:
                break
            if stat.S_ISDIR(st.st_mode) and not (st.st_mode & 0o001) and st.st_uid != uid:
                out.setdefault(cur, set()).add(parts[i + 1])
                break
    return out


def shadow(needed, uid, stage_root):
    """Cover each directory `uid` cannot traverse with a tmpfs that re-exposes only what is needed."""
    for _ in range(8):  # nested untraversable levels, outermost first
        todo = untraversable(needed, uid)
        if not todo:
            return
        mount("tmpfs", stage_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0700")
        try:
            moved = []
            for n, (ancestor, children) in enumerate(sorted(todo.items())):
                for m, child in enumerate(sorted(children)):
                    src = os.path.join(ancestor, child)
                    stage = os.path.join(stage_root, f"{n}-{m}")
                    if os.path.isdir(src):
                        os.mkdir(stage)
                    else:
                        open(stage, "w").close()
                    mount(src, stage, None, MS_BIND | MS_REC)
                    moved.append((stage, ancestor, child, os.path.isdir(src)))
            for ancestor in todo:
                mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
            for stage, ancestor, child, is_dir in moved:
                target = os.path.join(ancestor, child)
                if is_dir:
                    os.mkdir(target)
                else:
                    open(target, "w").close()
                mount(stage, target, None, MS_MOVE)
        finally:
            check(libc().umount2(stage_root.encode(), MNT_DETACH), "umount stage")
    raise OSError("too many nested untraversable directories")


def setup_namespaces(req, info):
    """Enter the namespaces and lock the filesystem; raises OSError when something is unavailable."""
    work = req["workdir"]
    size = int(req["limits"]["max_file_mb"]) * 4
    root = os.getuid() == 0
    base = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if root:
        unshare(base, "mount, net, pid, ipc, uts")
    else:
        uid, gid = os.getuid(), os.getgid()
        unshare(base | CLONE_NEWUSER, "user, mount, net, pid, ipc, uts")
        write_maps(f"0 {uid} 1", f"0 {gid} 1")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    if root:
        needed = [os.path.dirname(os.path.realpath(sys.executable))]
        needed += [p for p in sys.path if p and os.path.isdir(p)]
        shadow(needed, SANDBOX_UID, work)
    how = make_everything_readonly()
    owner = f",uid={SANDBOX_UID},gid={SANDBOX_UID}" if root else ""
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,mode=0700{owner}")
    mechanisms = ["netns", "mountns-readonly", "tmpfs-workdir", "pidns", "ipcns", "utsns"]
    if root:
        os.setgroups([])
        os.setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
        os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
        libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # so it may write its own uid_map
        mechanisms.append(f"uid{SANDBOX_UID}")
        try:
            unshare(CLONE_NEWUSER, "user")
            write_maps(f"0 {SANDBOX_UID} 1", f"0 {SANDBOX_UID} 1")
            mechanisms.append("userns")
        except OSError as e:  # still uid 65534: RLIMIT_NPROC then counts all of that uid's processes
            info["notes"].append(f"no user namespace for uid {SANDBOX_UID} ({e})")
    else:
        unshare(CLONE_NEWUSER, "nested user")  # drop the privileges over the mounts just made
        write_maps("0 0 1", "0 0 1")
        mechanisms.append("userns")
    info["mechanisms"] = mechanisms
    info["readonly"] = how


# ------------------------------------------------------------------ the fallback guard
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
    """The audit hook of the fallback: refuse what the missing namespaces would have stopped."""
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
def set_limits(limits, fallback_nproc):
    cpu = max(1, int(limits["cpu_s"]))
    mem = int(limits["memory_mb"]) * 2**20
    fsize = int(limits["max_file_mb"]) * 2**20
    nproc = int(limits["max_processes"]) + fallback_nproc
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


def child_main(req, guarded, nproc_base):
    try:
        os.chdir(req["workdir"])
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
        set_limits(req["limits"], nproc_base)
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


def init_main(req, guarded, nproc_base):
    """PID 1 of the sandbox's pid namespace: run the code in a child, reap orphans, exit with it.
    When this process exits the kernel kills everything else in the namespace."""
    pid = os.fork()
    if pid == 0:
        child_main(req, guarded, nproc_base)
    while True:
        try:
            done, st = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if done == pid:
            if os.WIFSIGNALED(st):
                os._exit(128 + os.WTERMSIG(st))
            os._exit(os.WEXITSTATUS(st))


def count_own_tasks(uid):
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                pass
    return n


def main():
    status_fd = int(sys.argv[1])
    req = json.loads(sys.stdin.read())
    for name in req.get(
        "preload", []
    ):  # before any privilege drop: the interpreter may live where uid 65534 cannot read
        try:
            __import__(name)
        except Exception:  # noqa: BLE001
            pass
    info = {"isolation": "audit-hook", "mechanisms": [], "notes": []}
    namespaced = False
    if req.get("namespaces", True):
        try:
            setup_namespaces(req, info)
            namespaced = True
            info["isolation"] = "namespaces"
        except Exception as e:  # noqa: BLE001
            info["notes"].append(f"namespaces unavailable: {e}")
    nproc_base = 0
    if not namespaced:
        info["mechanisms"] = ["rlimits", "audit-hook"]
        nproc_base = count_own_tasks(os.getuid())  # RLIMIT_NPROC counts every process of this uid
    else:
        info["mechanisms"].append("rlimits")
    os.write(status_fd, (json.dumps({"event": "ready", **info}) + "\n").encode())
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        if namespaced:
            init_main(req, False, 0)
        child_main(req, True, nproc_base)
    code, sig = wait_status(pid)
    if namespaced and code is not None and code > 128:
        code, sig = None, code - 128
    out = {"event": "exit", "code": code, "signal": sig}
    os.write(status_fd, (json.dumps(out) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
