"""Tools an agent may call mid-generation: `python` (a sandboxed interpreter) and `search` (BM25 over
a local corpus). `ToolBox` runs calls on a small thread pool so the decode loop keeps generating
for the other trajectories while a tool works, and counts calls, errors and timeouts per tool."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from archer.core.tools.python_sandbox import PythonSandbox, SandboxLimits, ToolResult

TOOL_NAMES = ("python", "search")

__all__ = ["TOOL_NAMES", "PythonSandbox", "SandboxLimits", "ToolBox", "ToolResult"]


class ToolBox:
    """The tools of one run. `submit(name, content)` returns a Future of a `ToolResult`."""

    def __init__(self, python: PythonSandbox | None = None, search: Any = None, *, workers: int = 2):
        self.python = python
        self.search = search
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="archer-tool")
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(n for n in TOOL_NAMES if getattr(self, n) is not None)

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def call(self, name: str, content: str) -> ToolResult:
        """Run one call now (on the caller's thread)."""
        self._count(f"{name}/calls")
        if name == "python" and self.python is not None:
            result = self.python.run(content)
        elif name == "search" and self.search is not None:
            text, cached = self.search.search(content)
            result = ToolResult(text, "ok", cached=cached)
        else:
            result = ToolResult(
                f"error: no tool named {name!r} (available: {', '.join(self.available) or 'none'})", "error"
            )
        if result.status == "timeout" or result.status == "cpu_limit":
            self._count(f"{name}/timeouts")
        elif not result.ok:
            self._count(f"{name}/errors")
        if result.cached:
            self._count(f"{name}/cached")
        return result

    def submit(self, name: str, content: str) -> Future:
        return self._pool.submit(self.call, name, content)

    def take_counts(self) -> dict[str, float]:
        """Counters since the last call (per-step metrics), as floats."""
        with self._lock:
            out = {k: float(v) for k, v in self.counts.items()}
            self.counts.clear()
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
