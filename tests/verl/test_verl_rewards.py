"""archer's graders as verl's custom reward function (called from executor threads of Ray workers),
and the sandboxed unit-test reward of the `code` preset: verdicts, and each limit proven by a
program that breaks it (wall clock, CPU time, memory, network). No verl needed for these."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from archer.core.rewards import score_batch
from archer.core.rewards.code import CodeLimits, extract_code, score_code
from archer.core.rewards.verl_reward import compute_score

STDIO = json.dumps({"inputs": ["1 2\n", "30 12\n"], "outputs": ["3\n", "42\n"]})
ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nDone."


def in_thread(fn, *args, **kwargs):
    """Run on a non-main thread, as verl's reward loop does (signal-based timeouts fail there)."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn(*args, **kwargs)))
    t.start()
    t.join()
    return out["v"]


def test_verl_reward_function_grades_math_from_a_thread():
    right = in_thread(
        compute_score,
        "math_dapo",
        "so the answer is \\boxed{\\frac{1}{2}}",
        "0.5",
        {},
        function="math",
        timeout_s=10.0,
    )
    wrong = in_thread(compute_score, "math_dapo", "Answer: 3", "4", {}, function="math", timeout_s=10.0)
    assert right == {"score": 1.0, "acc": True, "pred": "\\frac{1}{2}"}
    assert wrong == {"score": 0.0, "acc": False, "pred": "3"}
    bonus = compute_score("math_dapo", "\\boxed{3}", "4", function="math", format_reward=0.1)
    assert bonus["score"] == pytest.approx(0.1) and bonus["acc"] is False  # parseable, wrong
    with pytest.raises(ValueError, match="unknown reward function"):
        compute_score("x", "y", "z", function="poetry")


def test_verl_reward_function_grades_code():
    assert compute_score("code", ADD, STDIO, None, function="code")["score"] == 1.0
    assert compute_score("code", fenced("print(3)"), STDIO, None, function="code")["acc"] is False


@pytest.mark.parametrize(
    "response,truth,reward,error",
    [
        (ADD, STDIO, 1.0, None),
        (fenced("print(3)"), STDIO, 0.0, "wrong answer on test 2 of 2"),
        ("no code at all", STDIO, 0.0, "no fenced code block"),
        (
            fenced("def add(a, b):\n    return a + b"),
            json.dumps({"fn_name": "add", "inputs": [[1, 2], "[3, 4]"], "outputs": [3, [7]]}),
            1.0,
            None,
        ),
        (
            fenced("class Solution:\n    def add(self, a, b):\n        return a - b"),
            json.dumps({"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}),
            0.0,
            "wrong answer on test 1 of 1",
        ),
        (fenced("def add(a, b):\n    return a + b"), "assert add(2, 2) == 4\n", 1.0, None),
        (fenced("def add(a, b):\n    return a * b"), "assert add(2, 3) == 5\n", 0.0, "AssertionError"),
        (fenced("raise SystemExit(0)"), json.dumps([{"input": "", "output": ""}]), 1.0, None),
        (fenced("print(undefined_name)"), STDIO, 0.0, "NameError"),
    ],
)
def test_code_reward_verdicts(response, truth, reward, error):
    s = score_code(response, truth, timeout_s=10.0)
    assert s.reward == reward and s.correct == (reward == 1.0)
    if error:
        assert error in s.error
    else:
        assert s.error is None


def test_last_fenced_block_is_the_program():
    assert extract_code("```python\nprint(1)\n```\nthen\n```py\nprint(2)\n```") == "print(2)\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"


def test_wall_clock_limit_kills_a_sleeping_program():
    s = in_thread(score_code, fenced("import time\ntime.sleep(600)"), STDIO, limits=CodeLimits(timeout_s=2.0))
    assert s.reward == 0.0 and s.error == "timeout on test 1 of 2"


def test_cpu_time_limit_stops_a_busy_program():
    s = score_code(fenced("while True:\n    pass"), STDIO, limits=CodeLimits(timeout_s=120.0, cpu_s=1))
    assert s.reward == 0.0 and s.error == "cpu_limit on test 1 of 2"  # the CPU limit, not the wall clock


def test_memory_limit_stops_a_hungry_program():
    s = score_code(
        fenced("x = bytearray(4 * 1024 ** 3)\nprint(len(x))"), STDIO, limits=CodeLimits(memory_mb=256)
    )
    assert s.reward == 0.0 and s.error.startswith("memory_limit on test 1")


@pytest.mark.parametrize("isolation", ["bwrap", "none"], ids=["bwrap", "none-socket-guard"])
def test_no_network_under_either_isolation(isolation):
    """A listening socket in this process: the program must not reach it (bwrap: a new network
    namespace and a seccomp filter refusing sockets; "none": the accident guard refuses sockets)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        program = (
            f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            "    print('connected')\nexcept Exception as e:\n    print('blocked')"
        )
        truth = json.dumps({"inputs": [""], "outputs": ["blocked"]})
        s = score_code(fenced(program), truth, limits=CodeLimits(timeout_s=20.0, isolation=isolation))
        assert s.reward == 1.0, s.error
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected


def test_code_is_a_registered_reward_function():
    scores = score_batch("code", [ADD, fenced("print(0)")], [STDIO, STDIO], timeout_s=10.0)
    assert [s.reward for s in scores] == [1.0, 0.0]
