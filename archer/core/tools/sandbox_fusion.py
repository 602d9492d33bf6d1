"""The python tool on a SandboxFusion server (`agent.tools.python.backend=sandbox_fusion`).

Clusters that already run SandboxFusion (bytedance/SandboxFusion: code runs in its own containers,
on its own machines) can send the tool's code there instead of running bubblewrap on every rollout
node. The request is verl's own client (`verl.utils.reward_score.sandbox_fusion.utils.
call_sandbox_api`: the `/run_code` JSON body, retries on 504), so archer holds no second HTTP
client; it needs the verl extra. What the model sees is what the local sandbox returns: the code is
wrapped in the local bootstrap's own `run_code` (a bare last expression is printed, an error comes
back as its last traceback line), stdout then stderr, cut at `max_output_chars`, with the same
statuses (ok, error, timeout, memory_limit, killed). The isolation is the server's
(docs/security.md); archer's limits go along as the request's run timeout and memory limit.

A server that cannot be reached, or that reports its own failure (`SandboxError`), raises
`SandboxUnavailable` naming the URL: an environment problem, never a tool result the model is
trained on. `probe()` (run at start, like the local sandbox's) finds it before training.
"""

from __future__ import annotations

import ast
import time
import warnings
from collections.abc import Callable
from typing import Any

from archer.core.tools.python_sandbox import (
    BOOT_SOURCE,
    PythonSandbox,
    SandboxLimits,
    SandboxUnavailable,
    ToolResult,
)
from archer.errors import ConfigError

BACKEND_KEY = "agent.tools.python.backend"
URL_KEY = "agent.tools.python.sandbox_fusion_url"


def _run_code_source() -> str:
    """The local bootstrap's `run_code` (one definition of how code is run and reported)."""
    tree = ast.parse(BOOT_SOURCE)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run_code")
    source = ast.get_source_segment(BOOT_SOURCE, node)
    if source is None:  # pragma: no cover - the bootstrap is a plain source file
        raise RuntimeError("cannot read run_code from the sandbox bootstrap")
    return source


RUN_CODE = _run_code_source()


def wrapped(code: str) -> str:
    """The program sent to the server: the bootstrap's `run_code` over the model's code."""
    return f"import sys\n\n{RUN_CODE}\n\nsys.exit(run_code({{'code': {code!r}}}, False))\n"


def verl_client() -> Callable[..., tuple[dict | None, str | None]]:
    """verl's SandboxFusion client; a ConfigError naming the extra where verl is absent."""
    try:
        with warnings.catch_warnings():  # verl announces the optional engines it lacks
            warnings.simplefilter("ignore")
            from verl.utils.reward_score.sandbox_fusion.utils import call_sandbox_api
    except ImportError as e:
        raise ConfigError(
            f"{BACKEND_KEY}=sandbox_fusion uses verl's SandboxFusion client, and verl is not "
            f"importable ({e})",
            hint="pip install -e '.[verl]', or set agent.tools.python.backend=local",
        ) from e
    return call_sandbox_api


class SandboxFusionPython(PythonSandbox):
    """`PythonSandbox`'s interface (run, probe, cache, limits) over a SandboxFusion server."""

    def __init__(
        self,
        url: str | None,
        limits: SandboxLimits | None = None,
        *,
        cache_size: int = 0,
        client: Callable[..., tuple[dict | None, str | None]] | None = None,
    ):
        if not url:
            raise ConfigError(
                f"{BACKEND_KEY}=sandbox_fusion needs the server's run_code URL",
                hint=f"set {URL_KEY}=http://HOST:8080/run_code",
            )
        super().__init__(limits, cache_size=cache_size)
        self.url = str(url)
        self.client = client or verl_client()
        self.mode = "sandbox_fusion"

    def _run(self, code: str) -> ToolResult:
        lim = self.limits
        t0 = time.monotonic()
        response, error = self.client(
            sandbox_fusion_url=self.url,
            code=wrapped(code),
            stdin=None,
            compile_timeout=lim.timeout_s,
            run_timeout=lim.timeout_s,
            memory_limit_mb=lim.memory_mb,
            language="python",
        )
        if response is None:
            raise SandboxUnavailable(
                f"the python tool's SandboxFusion server {self.url} did not answer: {error}",
                hint=f"start it or fix {URL_KEY}; or set {BACKEND_KEY}=local (bubblewrap on this machine)",
            )
        return self._from_response(response, time.monotonic() - t0)

    def _from_response(self, response: dict[str, Any], seconds: float) -> ToolResult:
        lim = self.limits
        status = response.get("status")
        run = response.get("run_result") or {}
        if status == "SandboxError" or not isinstance(run, dict) or not run:
            raise SandboxUnavailable(
                f"the python tool's SandboxFusion server {self.url} failed to run the code: "
                f"{response.get('message') or status or 'no run_result in its answer'}",
                hint="see the server's log; the code never ran",
            )
        text = (run.get("stdout") or "") + (run.get("stderr") or "")
        truncated = len(text) > lim.max_output_chars
        text = text[: lim.max_output_chars].rstrip("\n")
        code = run.get("return_code")
        if run.get("status") == "TimeLimitExceeded":
            state, note = "timeout", f"TimeoutError: stopped after {lim.timeout_s:g}s of wall-clock time"
        elif run.get("status") != "Finished" or code is None:
            state, note = "killed", f"sandbox: the server stopped the code ({run.get('status')})"
        elif code == 0:
            state, note = "ok", ""
        elif code < 0 or code > 128:  # a signal: its memory limit kills with SIGKILL
            state, note = "killed", f"sandbox: killed (exit status {code})"
        elif "MemoryError" in text:
            state, note = "memory_limit", f"(memory limit {lim.memory_mb} MiB)"
        else:
            state, note = "error", ""
        parts = [text] if text else []
        if note:
            parts.append(note)
        if truncated:
            parts.append(f"[output truncated to {lim.max_output_chars} characters]")
        isolation = {"isolation": "sandbox_fusion", "mechanisms": ["sandbox_fusion"], "url": self.url}
        self.isolation = isolation
        return ToolResult("\n".join(parts) if parts else "(no output)", state, seconds, truncated, isolation)
