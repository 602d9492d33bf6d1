"""The Python tool's sandbox: each limit holds, with a clear result, and nothing is left running.

Every hostile case runs in a helper process that made itself a child subreaper, so any process
the sandbox failed to kill would be re-parented to it and show up in its child list.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archer.core.tools.python_sandbox import PythonSandbox, SandboxLimits

ROOT = Path(__file__).resolve().parents[1]
HELPER = r"""
import ctypes, json, os, sys, time
sys.path.insert(0, sys.argv[1])
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
from archer.core.tools.python_sandbox import PythonSandbox, SandboxLimits
sb = PythonSandbox(SandboxLimits(timeout_s=float(sys.argv[3]), cpu_s=1, memory_mb=256, max_processes=12),
                   namespaces=sys.argv[2] == "ns")
r = sb.run(sys.stdin.read())
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
print(json.dumps({"status": r.status, "text": r.text, "isolation": r.isolation, "alive": children()}))
"""


def run_case(code: str, mode: str, timeout_s: float = 8.0) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", HELPER, str(ROOT), mode, str(timeout_s)],
        input=code,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


ISOLATION = PythonSandbox().probe().get("isolation")
MODES = ["ns", "hook"] if ISOLATION == "namespaces" else ["hook"]

CASES = {
    "fork_bomb": (
        "import os\nwhile True:\n    os.fork()",
        {"error"},
        ("Resource temporarily unavailable", "os.fork is not allowed"),
    ),
    "infinite_loop": ("while True:\n    pass", {"cpu_limit"}, ("CPU time",)),
    "sleeper": ("import time\ntime.sleep(60)", {"timeout"}, ("wall-clock",)),
    "memory_hog": ("a = []\nwhile True:\n    a.append(bytearray(10**7))", {"memory_limit"}, ("MemoryError",)),
    "write_outside": (
        f"open({str(ROOT / 'sandbox_escape.txt')!r}, 'w').write('x')",
        {"error"},
        ("Read-only file system", "writing outside the working directory"),
    ),
    "write_tmp": (
        "open('/tmp/archer_sandbox_escape.txt', 'w').write('x')",
        {"error"},
        ("Read-only file system", "writing outside the working directory"),
    ),
    "socket": (
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)",
        {"error"},
        ("Network is unreachable", "network access is disabled"),
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_code_is_contained_and_nothing_survives(case, mode):
    code, statuses, phrases = CASES[case]
    r = run_case(code, mode, timeout_s=2.0 if case == "sleeper" else 8.0)
    assert r["status"] in statuses, r
    assert any(p in r["text"] for p in phrases), r
    assert r["alive"] == [], f"processes survived the sandbox: {r}"
    assert r["isolation"]["isolation"] == ("namespaces" if mode == "ns" else "audit-hook")
    assert not (ROOT / "sandbox_escape.txt").exists() and not Path("/tmp/archer_sandbox_escape.txt").exists()


def test_forked_children_that_leave_the_session_are_killed_too():
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')"
    r = run_case(code, "ns" if "ns" in MODES else "hook")
    assert r["alive"] == [], r
    if "ns" in MODES:
        assert r["status"] == "ok" and "parent done" in r["text"]


def test_ordinary_code_output_errors_and_truncation(tmp_path):
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
    assert sb.isolation["isolation"] in ("namespaces", "audit-hook")


def test_result_cache_skips_identical_code():
    sb = PythonSandbox(cache_size=4)
    first, second = sb.run("6*7"), sb.run("6*7")
    assert (first.text, second.text) == ("42", "42") and not first.cached and second.cached
