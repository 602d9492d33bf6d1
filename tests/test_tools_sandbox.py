"""The Python tool's sandbox, attacked: every case runs in every mode (docs/security.md).

Modes:
- `bwrap`: bubblewrap as the user running the tests (as root: the code drops to uid 65534).
- `bwrap-user`: as root only, the whole "trainer" runs as uid 65534 with the system Python, so
  the unprivileged path (a user namespace) is attacked too.
- `refused`: bubblewrap absent. The sandbox must refuse (SandboxUnavailable naming the fix) and
  the code must never run: the audit-hook fallback is no longer chosen silently.

Each case runs in a helper process (the "trainer") that holds a secret in its environment and
made itself a child subreaper, so any process the sandbox failed to kill is re-parented to it and
shows up in its child list. The host-side effects (files, sockets, modes) are checked here, from
outside the sandbox, not from what the sandboxed code claims.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from archer.core.tools.python_sandbox import PythonSandbox, SandboxLimits, SandboxUnavailable

ROOT = Path(__file__).resolve().parents[1]
SECRET = "archer-secret-" + uuid.uuid4().hex
HELPER = r"""
import ctypes, json, os, sys, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["root"])
os.environ["ARCHER_TRAINER_SECRET"] = cfg["secret"]
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
from archer.core.tools.python_sandbox import PythonSandbox, SandboxLimits, SandboxUnavailable
sb = PythonSandbox(SandboxLimits(timeout_s=cfg["timeout"], cpu_s=1, memory_mb=256, max_processes=12,
                                 max_output_chars=cfg.get("max_output", 4000)),
                   isolation=cfg["isolation"], bwrap=cfg.get("bwrap"))
code = sys.stdin.read().replace("HELPER_PID", str(os.getpid()))
try:
    r = sb.run(code)
    out = {"status": r.status, "text": r.text, "isolation": r.isolation, "truncated": r.truncated}
except SandboxUnavailable as e:
    out = {"refused": e.message, "hint": e.hint}
def children():
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                out.append(int(pid))
    return out
for _ in range(50):  # reap zombies the kill left behind; stop once none are alive
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    if not children():
        break
    time.sleep(0.1)
out["alive"] = children()
print(json.dumps(out))
"""


def _bwrap_works() -> str | None:
    """None where bubblewrap can build the sandbox here, else why not (the skip reason)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    try:
        PythonSandbox().probe()
    except SandboxUnavailable as e:
        return f"bubblewrap cannot create namespaces on this machine: {e.message}"
    return None


BWRAP_MISSING = _bwrap_works()
SYSTEM_PYTHON = "/usr/bin/python3"


def _user_mode_missing() -> str | None:
    if os.geteuid() != 0:
        return "the unprivileged path is the plain bwrap mode when not running as root"
    if BWRAP_MISSING:
        return BWRAP_MISSING
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON} for uid 65534 to run"
    for d in [ROOT, *ROOT.parents]:  # uid 65534 imports archer from this checkout
        if not os.stat(d).st_mode & 0o001:
            return f"{d} is not searchable by other users (uid 65534 cannot import archer from {ROOT})"
    return None


USER_MODE_MISSING = _user_mode_missing()
MODES = [
    pytest.param("bwrap", marks=pytest.mark.skipif(BWRAP_MISSING is not None, reason=str(BWRAP_MISSING))),
    pytest.param(
        "bwrap-user", marks=pytest.mark.skipif(USER_MODE_MISSING is not None, reason=str(USER_MODE_MISSING))
    ),
    "refused",
]


def run_case(code: str, mode: str, timeout_s: float = 8.0, **extra) -> dict:
    cfg = {"root": str(ROOT), "secret": SECRET, "timeout": timeout_s, **extra}
    argv = [sys.executable, "-c", HELPER]
    env = dict(os.environ)
    if mode == "refused":
        cfg |= {"isolation": "bwrap", "bwrap": "/nonexistent/bwrap"}
    else:
        cfg["isolation"] = "bwrap"
    if mode == "bwrap-user":
        argv = [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-c",
            HELPER,
        ]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    p = subprocess.run(
        [*argv, json.dumps(cfg)], input=code, capture_output=True, text=True, timeout=180, env=env
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture
def host_dir():
    """A host directory anyone may enter and write (so a failure is the sandbox's doing, not the
    permissions'), with a marker path the code tries to create."""
    d = Path(tempfile.mkdtemp(prefix="archer-host-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def contained(r: dict, mode: str, marker: Path | None = None) -> bool:
    """Common verdict: refused mode refused (and ran nothing); other modes ran in bwrap, left
    nothing alive, and never created the marker. Returns True when the code ran."""
    assert r["alive"] == [], f"processes survived the sandbox: {r}"
    if marker is not None:
        assert not marker.exists(), f"the sandboxed code changed the host: {marker} exists"
    if mode == "refused":
        assert "bubblewrap" in r["refused"] and "/nonexistent/bwrap" in r["refused"], r
        assert "apt-get install bubblewrap" in r["hint"] and "isolation=none" in r["hint"], r
        return False
    assert "refused" not in r, r
    assert r["isolation"]["isolation"] == "bwrap", r
    assert "seccomp" in r["isolation"]["mechanisms"] and "pidns" in r["isolation"]["mechanisms"]
    return True


def _try(marker: Path) -> str:
    """A first line that would prove the code ran on the host (creates the marker if it can)."""
    return f"try:\n    open({str(marker)!r}, 'w').write('ran')\nexcept OSError:\n    pass\n"


# ---------------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("mode", MODES)
def test_host_unix_socket_by_path_and_abstract_name_is_unreachable(mode, host_dir):
    path = host_dir / "host.sock"
    abstract = "\0archer-test-" + uuid.uuid4().hex
    with socket.socket(socket.AF_UNIX) as srv, socket.socket(socket.AF_UNIX) as asrv:
        srv.bind(str(path))
        path.chmod(0o777)  # a 0777 socket, as in the issue
        srv.listen(1)
        srv.setblocking(False)
        asrv.bind(abstract)
        asrv.listen(1)
        asrv.setblocking(False)
        code = _try(host_dir / "ran") + (
            "import socket\n"
            f"for addr in ({str(path)!r}, {abstract!r}):\n"
            "    try:\n"
            "        s = socket.socket(socket.AF_UNIX); s.connect(addr); s.sendall(b'id > /tmp/x')\n"
            "        print('CONNECTED', repr(addr))\n"
            "    except OSError as e:\n"
            "        print('blocked', e.errno)\n"
        )
        r = run_case(code, mode)
        if contained(r, mode, host_dir / "ran"):
            assert "CONNECTED" not in r["text"] and r["text"].count("blocked 1") == 2, r
        for server in (srv, asrv):
            with pytest.raises(BlockingIOError):
                server.accept()  # nothing ever connected


@pytest.mark.parametrize("mode", MODES)
def test_host_proc_is_invisible_and_host_processes_cannot_be_signalled(mode):
    code = (
        "import os, signal\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "print('pids', pids)\n"
        "for what in ('cmdline', 'environ'):\n"
        "    try:\n"
        "        open('/proc/HELPER_PID/' + what).read(); print('READ', what)\n"
        "    except OSError as e:\n"
        "        print('blocked', what, e.errno)\n"
        "try:\n"
        "    os.kill(HELPER_PID, signal.SIGKILL); print('KILLED')\n"
        "except OSError as e:\n"
        "    print('no kill', e.errno)\n"
    )
    r = run_case(code, mode)
    if contained(r, mode):
        pids = json.loads(r["text"].splitlines()[0].split(" ", 1)[1])
        assert max(pids) < 16, f"the sandbox sees more than its own processes: {pids}"
        assert "READ" not in r["text"] and "KILLED" not in r["text"], r
        assert f"no kill {errno.ESRCH}" in r["text"]


@pytest.mark.parametrize("mode", MODES)
def test_trainer_environment_and_secrets_do_not_reach_the_code(mode):
    code = (
        "import os\n"
        f"secret = {SECRET!r}\n"
        "found = [k for k, v in os.environ.items() if secret in v]\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit() or p == 'self':\n"
        "        try:\n"
        "            if secret.encode() in open(f'/proc/{p}/environ', 'rb').read():\n"
        "                found.append(p)\n"
        "        except OSError:\n"
        "            pass\n"
        "print('FOUND' if found else 'clean', sorted(os.environ))\n"
    )
    r = run_case(code, mode)
    if contained(r, mode):
        assert r["text"].startswith("clean"), r
        assert SECRET not in r["text"]


@pytest.mark.parametrize("mode", MODES)
def test_etc_shadow_other_users_files_and_the_host_tree_are_not_in_view(mode, host_dir):
    private = host_dir / "someone_elses.txt"
    private.write_text(SECRET)
    private.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(private, 1234, 1234)  # another user's file
    in_home = Path.home() / f".archer-test-{uuid.uuid4().hex}"  # $HOME must not be in view
    in_home.write_text(SECRET)
    targets = ["/etc/shadow", "/etc/passwd", str(private), str(ROOT / "pyproject.toml"), str(in_home)]
    code = (
        "import os\n"
        f"for t in {targets!r}:\n"
        "    try:\n"
        "        (os.listdir(t) if os.path.isdir(t) else open(t).read()); print('READ', t)\n"
        "    except OSError as e:\n"
        "        print('blocked', e.errno, t)\n"
        "print('top', sorted(os.listdir('/')))\n"
    )
    try:
        r = run_case(code, mode)
    finally:
        in_home.unlink()
    if contained(r, mode):
        assert "READ" not in r["text"] and SECRET not in r["text"], r
        top = json.loads(r["text"].splitlines()[-1].split(" ", 1)[1].replace("'", '"'))
        from archer.core.tools.python_sandbox import interpreter_paths

        python = SYSTEM_PYTHON if mode == "bwrap-user" else sys.executable
        own = {Path(p).parts[1] for p in interpreter_paths(python) if len(Path(p).parts) > 1}
        # the interpreter's own folders are shown read-only (a venv under /var/tmp shows /var)
        assert not ({"home", "run", "var", "mnt", "srv", "opt"} - own) & set(top), top


@pytest.mark.parametrize("mode", MODES)
def test_network_of_every_family_is_refused(mode):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.setblocking(False)
        port = srv.getsockname()[1]
        families = [
            n for n in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET", "AF_VSOCK", "AF_ALG")
        ]
        code = (
            "import socket\n"
            f"for name in {families!r}:\n"
            "    fam = getattr(socket, name, None)\n"
            "    if fam is None:\n"
            "        print('absent', name); continue\n"
            "    for typ in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW):\n"
            "        try:\n"
            "            socket.socket(fam, typ); print('OPENED', name, typ)\n"
            "        except OSError as e:\n"
            "            print('refused', name, e.errno)\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print('no tcp', e.errno)\n"
            "a, b = socket.socketpair(); a.sendall(b'x'); print('socketpair', b.recv(1))\n"
        )
        r = run_case(code, mode)
        if contained(r, mode):
            assert "OPENED" not in r["text"] and "CONNECTED" not in r["text"], r
            assert r["text"].count(f"refused AF_INET {errno.EPERM}") == 3
            assert "socketpair b'x'" in r["text"]  # a connected AF_UNIX pair reaches nothing: allowed
        with pytest.raises(BlockingIOError):
            srv.accept()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="raw syscall numbers below are x86_64's")
@pytest.mark.parametrize("mode", MODES)
def test_namespace_mount_ptrace_keyctl_bpf_calls_are_refused(mode):
    code = (
        "import ctypes, errno, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "calls = {\n"
        "  'unshare': lambda: libc.unshare(0x10000000),\n"
        "  'setns': lambda: libc.setns(os.open('/proc/self/ns/net', os.O_RDONLY), 0),\n"
        "  'mount': lambda: libc.mount(b'none', b'/sandbox', b'tmpfs', 0, None),\n"
        "  'ptrace': lambda: libc.ptrace(16, 1, 0, 0),\n"
        "  'keyctl': lambda: libc.syscall(250, 0, 0, 0, 0),\n"
        "  'bpf': lambda: libc.syscall(321, 0, 0, 0),\n"
        "  'clone-newuser': lambda: libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0),\n"
        "}\n"
        "for name, call in calls.items():\n"
        "    rc = call(); print(name, rc, errno.errorcode.get(ctypes.get_errno()))\n"
    )
    r = run_case(code, mode)
    if contained(r, mode):
        lines = r["text"].splitlines()
        assert len(lines) == 7, r
        for line in lines:
            name, rc, err = line.split()
            assert rc == "-1" and err == "EPERM", line


@pytest.mark.parametrize("mode", MODES)
def test_fork_bomb_is_stopped_and_nothing_survives(mode):
    r = run_case("import os\nwhile True:\n    os.fork()", mode)
    if contained(r, mode):
        assert r["status"] == "error" and "Resource temporarily unavailable" in r["text"], r


@pytest.mark.parametrize("mode", MODES)
def test_memory_hog_hits_the_memory_limit(mode):
    r = run_case("a = []\nwhile True:\n    a.append(bytearray(10**7))", mode)
    if contained(r, mode):
        assert r["status"] == "memory_limit" and "MemoryError" in r["text"], r


@pytest.mark.parametrize("mode", MODES)
def test_cpu_loop_and_sleeper_hit_their_limits(mode):
    r = run_case("while True:\n    pass", mode)
    if contained(r, mode):
        assert r["status"] == "cpu_limit" and "CPU time" in r["text"], r
    r = run_case("import time\ntime.sleep(60)", mode, timeout_s=2.0)
    if contained(r, mode):
        assert r["status"] == "timeout" and "wall-clock" in r["text"], r


@pytest.mark.parametrize("mode", MODES)
def test_output_flood_is_capped(mode):
    r = run_case(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", mode, timeout_s=3.0, max_output=100
    )
    if contained(r, mode):
        assert r["truncated"] and r["status"] in ("timeout", "cpu_limit"), r
        assert len(r["text"]) < 400 and "truncated to 100" in r["text"]


@pytest.mark.parametrize("mode", MODES)
def test_setsid_orphans_and_daemons_die_with_the_call(mode, host_dir):
    marker = host_dir / "orphan-was-alive"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(3)\n"
        f"        open({str(marker)!r}, 'w').write('x')\n"  # cannot reach the host anyway
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('parent done')\n"
    )
    r = run_case(code, mode)
    if contained(r, mode, marker):
        assert r["status"] == "ok" and "parent done" in r["text"], r
    # and when the call times out with the orphans still running
    r = run_case(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)", mode, 2.0
    )
    if contained(r, mode):
        assert r["status"] == "timeout", r


@pytest.mark.parametrize("mode", MODES)
def test_posixsubprocess_fork_exec_shell_stays_inside(mode, host_dir):
    marker = host_dir / "shell-was-here"
    code = (
        "import _posixsubprocess, subprocess\n"
        "real, calls = _posixsubprocess.fork_exec, []\n"
        "assert getattr(subprocess, '_fork_exec', real) is real\n"
        "def spy(*a):\n"
        "    calls.append(a[0]); return real(*a)\n"
        "subprocess._fork_exec = spy\n"
        f"sh = 'id > {marker}; echo shell ran; (sleep 60 >/dev/null 2>&1 &)'\n"
        "p = subprocess.Popen(['/bin/sh', '-c', sh], "
        "start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)\n"
        "print(p.communicate()[0].decode().strip(), 'fork_exec calls', len(calls))\n"
    )
    r = run_case(code, mode)
    if contained(r, mode, marker):
        assert "fork_exec calls 1" in r["text"] and "shell ran" in r["text"], r
        assert "cannot create" in r["text"], r


@pytest.mark.parametrize("mode", MODES)
def test_dir_fd_writes_and_fchmod_setuid_outside_the_work_dir_fail(mode, host_dir):
    victim = host_dir / "victim"
    victim.write_text("v")
    victim.chmod(0o755)
    name = "escape-" + uuid.uuid4().hex
    code = (
        "import os, sys\n"
        "def attempt(what, f):\n"
        "    try:\n"
        "        f(); print('DID', what)\n"
        "    except OSError as e:\n"
        "        print('failed', what, e.errno)\n"
        f"for d in ('/', sys.prefix, os.path.dirname(os.path.realpath(sys.executable)), {str(host_dir)!r}):\n"
        "    try:\n"
        "        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)\n"
        "    except OSError as e:\n"
        "        print('no dir', d, e.errno); continue\n"
        f"    attempt('create', lambda: os.open({name!r}, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))\n"
        f"    attempt('mkdir', lambda: os.mkdir({name!r}, dir_fd=fd))\n"
        "    attempt('rename', lambda: os.rename('sandbox' if d == '/' else 'bin', "
        f"{name!r}, src_dir_fd=fd, dst_dir_fd=fd))\n"
        f"for t in (os.path.realpath(sys.executable), {str(victim)!r}):\n"
        "    try:\n"
        "        fd = os.open(t, os.O_RDONLY)\n"
        "    except OSError as e:\n"
        "        print('no file', e.errno); continue\n"
        "    attempt('fchmod', lambda: os.fchmod(fd, 0o4777))\n"
        "    attempt('chmod-path', lambda: os.chmod(t, 0o4777))\n"
    )
    exe = os.path.realpath(sys.executable if mode != "bwrap-user" else SYSTEM_PYTHON)
    before = os.stat(exe).st_mode
    r = run_case(code, mode)
    try:
        if contained(r, mode):
            assert "DID" not in r["text"], r
    finally:
        assert os.stat(exe).st_mode == before, "the interpreter's mode changed"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    assert not (host_dir / name).exists()
    prefix = Path(sys.prefix)
    assert not (prefix / name).exists() and not (Path("/") / name).exists()


@pytest.mark.parametrize("mode", MODES)
def test_writes_to_the_host_tree_and_tmp_never_reach_the_host(mode, host_dir):
    name = "archer_sandbox_escape_" + uuid.uuid4().hex
    targets = [str(ROOT / name), f"/tmp/{name}", str(host_dir / name), f"/usr/{name}"]
    code = (
        f"for t in {targets!r}:\n"
        "    try:\n"
        "        open(t, 'w').write('x'); print('wrote', t)\n"
        "    except OSError as e:\n"
        "        print('failed', e.errno, t)\n"
    )
    r = run_case(code, mode)
    try:
        if contained(r, mode):
            # /tmp inside is the private work dir: writing there is fine, and it vanishes
            assert f"wrote /tmp/{name}" in r["text"], r
        for t in targets:
            assert not Path(t).exists(), f"{t} appeared on the host"
    finally:
        for t in targets:
            Path(t).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- modes


def test_refusal_names_the_fix_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    sb = PythonSandbox(bwrap=str(tmp_path / "no-bwrap"))
    with pytest.raises(SandboxUnavailable) as e:
        sb.run(f"open({str(marker)!r}, 'w').write('x')")
    assert "bubblewrap" in e.value.message
    assert (
        "apt-get install bubblewrap" in e.value.hint and "agent.tools.python.isolation=none" in e.value.hint
    )
    assert not marker.exists()
    with pytest.raises(SandboxUnavailable):
        sb.probe()


def test_a_bwrap_that_cannot_build_the_sandbox_is_a_refusal_not_a_fallback(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable) as e:
        PythonSandbox(bwrap=str(fake)).run("print(1)")
    assert "No permissions to creating new namespace" in e.value.message
    assert "user namespaces" in e.value.hint and "isolation=none" in e.value.hint


def test_unknown_isolation_mode_is_a_config_error():
    from archer.errors import ConfigError

    with pytest.raises(ConfigError, match="not a sandbox mode"):
        PythonSandbox(isolation="namespaces")


def test_none_mode_runs_unisolated_but_keeps_the_accident_limits(tmp_path):
    sb = PythonSandbox(SandboxLimits(cpu_s=1, memory_mb=256, max_output_chars=200), isolation="none")
    r = sb.run("print(6*7)")
    assert r.ok and r.text == "42" and r.isolation["isolation"] == "none" and r.isolation["unsafe"]
    assert sb.run("while True:\n    pass").status == "cpu_limit"
    assert sb.run("a = []\nwhile True:\n    a.append(bytearray(10**7))").status == "memory_limit"
    assert sb.run("print('x' * 10000)").truncated
    r = sb.run("import socket\nsocket.socket()")  # the guard refuses the obvious, by accident only
    assert r.status == "error" and "network access is disabled" in r.text


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11), reason="calls _posixsubprocess.fork_exec with 3.11's signature"
)
def test_none_mode_is_no_boundary_but_kills_setsid_orphans(tmp_path):
    """The issue's bypass still works in "none" (that is why it is opt-in and unsafe): a direct
    fork_exec runs a shell that writes outside the work dir. Its setsid child still dies."""
    marker = tmp_path / "shell-ran"
    code = (
        "import _posixsubprocess, os, time\n"
        "r, w = os.pipe()\n"
        f"sh = [b'/bin/sh', b'-c', b'echo x > {marker}; exec sleep 60']\n"
        "_posixsubprocess.fork_exec(sh, [b'/bin/sh'], True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w,"
        " True, True, -1, None, None, None, -1, None, False)\n"
        "time.sleep(60)\n"
    )
    cfg = {"root": str(ROOT), "secret": SECRET, "timeout": 3.0, "isolation": "none"}
    p = subprocess.run(
        [sys.executable, "-c", HELPER, json.dumps(cfg)],
        input=code,
        capture_output=True,
        text=True,
        timeout=120,
    )
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["status"] == "timeout" and r["alive"] == [], r
    assert marker.exists()  # the audit hook did not stop it: "none" holds nothing


def test_engine_warns_at_every_start_when_isolation_is_none(tmp_path):
    from archer.core.agent.engine import AgentRunner
    from archer.core.config import compose

    c = compose("arpo-quickstart", ["agent.tools.search.enable=false", "agent.tools.python.isolation=none"])
    runner = AgentRunner(c.cfg, None, tmp_path, tmp_path, "cpu")
    try:
        line = runner.describe()
    finally:
        runner.toolbox.close()
    assert "python sandbox none" in line and "WITHOUT isolation" in line
    assert "agent.tools.python.isolation=none" in line


@pytest.mark.skipif(BWRAP_MISSING is not None, reason=str(BWRAP_MISSING))
def test_ordinary_code_output_errors_truncation_and_a_fresh_work_dir():
    sb = PythonSandbox(SandboxLimits(max_output_chars=50))
    assert sb.run("315*570").text == "179550"  # a bare last expression is printed, as ARPO does
    r = sb.run("print('a')\n1/0")
    assert r.status == "error" and r.text == "a\nZeroDivisionError: division by zero"
    r = sb.run("print('x' * 10000)")
    assert r.truncated and r.text.startswith("x" * 50) and "truncated to 50" in r.text
    r = sb.run(
        "import os\nopen('f.txt', 'w').write('hi')\nprint(sorted(os.listdir('.')), len(os.environ) < 12)"
    )
    assert r.ok and r.text == "['f.txt'] True"  # an empty, private working directory; a scrubbed environment
    assert sb.run("import os\nprint(sorted(os.listdir('.')))").text == "[]"  # and a new one per call
    assert sb.run("import numpy\nprint(int(numpy.arange(4).sum()))").text == "6"  # site-packages in view
    assert sb.isolation["isolation"] == "bwrap"


@pytest.mark.skipif(BWRAP_MISSING is not None, reason=str(BWRAP_MISSING))
def test_result_cache_skips_identical_code():
    sb = PythonSandbox(cache_size=4)
    first, second = sb.run("6*7"), sb.run("6*7")
    assert (first.text, second.text) == ("42", "42") and not first.cached and second.cached


def test_an_interpreter_under_tmp_keeps_its_bind_and_the_work_dir_moves_to_tmpdir(monkeypatch):
    """A venv under /tmp (CI clones there) is bound read-only; /tmp cannot also become the work
    dir's symlink (bwrap: "Can't make symlink at /tmp"), so TMPDIR alone points at the work dir."""
    import archer.core.tools.python_sandbox as ps

    limits = ps.SandboxLimits()
    monkeypatch.setattr(ps, "interpreter_paths", lambda python: ["/tmp/ci/venv/bin", "/usr/lib/python3.11"])
    argv = ps.bwrap_argv("bwrap", "/tmp/ci/venv/bin/python", limits, 3, as_root=False)
    assert not any(argv[i : i + 3] == ["--symlink", ps.SANDBOX_WORKDIR, "/tmp"] for i in range(len(argv)))
    assert any(
        argv[i : i + 3] == ["--ro-bind", "/tmp/ci/venv/bin", "/tmp/ci/venv/bin"] for i in range(len(argv))
    )
    monkeypatch.setattr(ps, "interpreter_paths", lambda python: ["/opt/venv/bin"])
    argv = ps.bwrap_argv("bwrap", "/opt/venv/bin/python", limits, 3, as_root=False)
    assert any(argv[i : i + 3] == ["--symlink", ps.SANDBOX_WORKDIR, "/tmp"] for i in range(len(argv)))
