"""The code reward: the response's program must pass every unit test, run in a sandbox.

The program is the last fenced code block of the response (```python, ```py or a bare ```), in the
text after `</think>` when there is one (as Archer2.0 grades: draft code inside the thinking does
not count).
The ground truth is one of (the layouts of Archer2.0-Code, LiveCodeBench/TACO and plain tests):
  - JSON {"inputs": [...], "outputs": [...]}: each input goes to stdin, stdout must equal the
    output (trailing whitespace per line and blank lines at the ends ignored);
  - the same with "fn_name": each input is a list of arguments (a JSON string or list) for
    `fn_name` (a function, or a method of `class Solution`); its JSON result must equal the output;
  - a JSON list of {"input": ..., "output": ...} pairs (stdin style);
  - anything else is Python test code (asserts) run after the program; it passes on exit code 0.

Every run happens in archer's Python sandbox (archer/core/tools/python_sandbox.py): a fresh
interpreter per test in a new session, with a wall-clock timeout (the process group is killed),
CPU-time, memory, process and file-size limits, a scrubbed environment, an empty working
directory, and no network — a network namespace where the kernel allows it, else an audit hook
that refuses sockets. Reward 1.0 only when all tests pass; the first failure is the `error`.
No signals are used in the caller, so grading works from threads and Ray workers.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from archer.core.rewards import Score
from archer.core.rewards.text import final_text

MAX_TESTS = 64  # a ground truth with more is cut (the first ones are kept)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class CodeLimits:
    """Per-test limits (the sandbox enforces them)."""

    timeout_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 1024
    max_output_chars: int = 1 << 20
    isolation: str = "bwrap"  # "none": no isolation at all (unsafe; see docs/security.md)


@dataclass
class TestSet:
    kind: str  # "stdio" | "call" | "script"
    inputs: list[Any]
    outputs: list[Any]
    fn_name: str | None = None
    script: str = ""


def extract_code(response: str) -> str | None:
    """The last fenced code block after `</think>` (of the whole response without one), or None."""
    blocks = _FENCE.findall(final_text(response))
    return blocks[-1] if blocks else None


def parse_tests(ground_truth: Any) -> TestSet:
    """A ground truth (JSON text, a mapping, a list, or Python test code) as a TestSet."""
    data = ground_truth
    if isinstance(ground_truth, str):
        try:
            data = json.loads(ground_truth)
        except ValueError:
            return TestSet("script", [], [], script=ground_truth)
    if isinstance(data, list):
        pairs = [p for p in data if isinstance(p, dict)]
        return TestSet("stdio", [p.get("input", "") for p in pairs], [p.get("output", "") for p in pairs])
    if isinstance(data, dict) and "inputs" in data and "outputs" in data:
        fn = data.get("fn_name")
        return TestSet("call" if fn else "stdio", list(data["inputs"]), list(data["outputs"]), fn_name=fn)
    raise ValueError(
        "code ground truth must be {'inputs', 'outputs'[, 'fn_name']}, a list of "
        "{'input', 'output'}, or Python test code"
    )


# The solution's stderr is muted while it runs (it must not mix into the compared stdout) and
# restored before an error propagates, so the sandbox still sees and classifies the exception.
_PRELUDE = "import io, json, sys, warnings\nwarnings.filterwarnings('ignore')\n_err = sys.stderr\n"


def _stdio_program(code: str, stdin: str) -> str:
    return (
        f"{_PRELUDE}sys.stdin = io.StringIO({stdin!r})\nsys.stderr = io.StringIO()\n"
        f"try:\n    exec(compile({code!r}, 'solution.py', 'exec'), {{'__name__': '__main__'}})\n"
        "finally:\n    sys.stderr = _err\n"
    )


def _call_program(code: str, fn_name: str, args: Any) -> str:
    return (
        f"{_PRELUDE}_ns = {{'__name__': 'solution'}}\n_args = json.loads({json.dumps(args)!r})\n"
        "_args = json.loads(_args) if isinstance(_args, str) else _args\n"
        "_real, sys.stdout, sys.stderr = sys.stdout, io.StringIO(), io.StringIO()\n"
        "try:\n"
        f"    exec(compile({code!r}, 'solution.py', 'exec'), _ns)\n"
        f"    _fn = _ns.get({fn_name!r}) or getattr(_ns['Solution'](), {fn_name!r})\n"
        "    _res = _fn(*_args) if isinstance(_args, list) else _fn(_args)\n"
        "finally:\n    sys.stdout, sys.stderr = _real, _err\n"
        "print(json.dumps(_res))\n"
    )


def _same_stdout(got: str, want: Any) -> bool:
    norm = lambda s: "\n".join(line.rstrip() for line in str(s).strip("\n").splitlines()).strip()  # noqa: E731
    return norm(got) == norm(want)


def _same_value(got: str, want: Any) -> bool:
    try:
        value = json.loads(got.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return False
    if isinstance(want, str):
        try:
            want = json.loads(want)
        except ValueError:
            pass
    if isinstance(want, list) and len(want) == 1 and not isinstance(value, list):
        want = want[0]
    return value == want


def _run(program: str, limits: CodeLimits) -> Any:
    from archer.core.tools.python_sandbox import PythonSandbox, SandboxLimits

    sandbox = PythonSandbox(
        SandboxLimits(
            timeout_s=limits.timeout_s,
            cpu_s=limits.cpu_s,
            memory_mb=limits.memory_mb,
            max_output_chars=limits.max_output_chars,
        ),
        isolation=limits.isolation,
    )
    return sandbox.run(program)


def _failure(result: Any, which: str) -> str:
    if result.status == "ok":
        return f"wrong answer on {which}"
    detail = result.text.strip().splitlines()[-1] if result.text.strip() else ""
    return f"{result.status} on {which}" + (
        f": {detail[:200]}" if detail and result.status == "error" else ""
    )


def score_code(
    response: str, ground_truth: Any, *, timeout_s: float = 10.0, limits: CodeLimits | None = None
) -> Score:
    """1.0 when the response's program passes every test of the ground truth."""
    limits = limits or CodeLimits(timeout_s=timeout_s)
    code = extract_code(response)
    if code is None:
        return Score(0.0, False, None, "no fenced code block in the response")
    try:
        tests = parse_tests(ground_truth)
    except ValueError as e:
        return Score(0.0, False, code[:1000], str(e))
    if tests.kind == "script":
        result = _run(code + "\n\n" + tests.script + "\n", limits)
        ok = result.status == "ok"
        return Score(1.0 if ok else 0.0, ok, code[:1000], None if ok else _failure(result, "the test script"))
    if not tests.inputs:
        return Score(0.0, False, code[:1000], "the ground truth has no test cases")
    for k, (inp, want) in enumerate(list(zip(tests.inputs, tests.outputs))[:MAX_TESTS]):
        if tests.kind == "call":
            result = _run(_call_program(code, tests.fn_name, inp), limits)
            ok = result.status == "ok" and _same_value(result.text, want)
        else:
            result = _run(_stdio_program(code, str(inp)), limits)
            got = "" if result.text == "(no output)" else result.text
            ok = result.status == "ok" and _same_stdout(got, want)
        if not ok:
            return Score(0.0, False, code[:1000], _failure(result, f"test {k + 1} of {len(tests.inputs)}"))
    return Score(1.0, True, code[:1000])


def score_code_batch(
    responses: list[str], ground_truths: list[Any], *, timeout_s: float = 10.0, max_workers: int | None = None
) -> list[Score]:
    """Grade many responses; each test is its own sandboxed process, several run at once."""
    from archer.core.rewards._pool import default_workers

    workers = max(1, min(len(responses), max_workers or default_workers())) if responses else 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archer-code-reward") as pool:
        return list(
            pool.map(lambda rg: score_code(rg[0], rg[1], timeout_s=timeout_s), zip(responses, ground_truths))
        )
