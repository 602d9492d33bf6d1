"""Statistics of a trace as data: what `archer trace info` prints and the viewer shows.

Only the manifest, the summary and the step files' footers are read (no token column), so
`describe` is cheap on any trace size.
"""

from __future__ import annotations

import os
from typing import Any

from .codec import describe_columns
from .reader import TraceReader


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Steps, rows, tokens, sizes on disk, columns, schema and run metadata, as a JSON-able dict."""
    r = TraceReader(path)
    entries = r.manifest()
    steps = r.steps()
    present = set(steps)
    listed = [e for e in entries if int(e["step"]) in present]
    step_bytes = sum((r.dir / e["file"]).stat().st_size for e in listed)
    total = sum(p.stat().st_size for p in r.dir.rglob("*") if p.is_file())
    columns: list[dict[str, str]] = []
    if steps:
        columns = describe_columns(r.schema(steps[-1]))  # as read, with how the file stores them
    return {
        "trace": str(r.dir),
        "format": r.summary.get("format"),
        "schema_version": r.schema_version,
        "steps": len(steps),
        "first_step": steps[0] if steps else None,
        "last_step": steps[-1] if steps else None,
        "latest_step_file": r.latest_step(),
        "responses": sum(int(e.get("n_responses") or 0) for e in listed),
        "tokens": sum(int(e.get("n_tokens") or 0) for e in listed),
        "influence_rows": sum(int(e.get("influence_rows") or 0) for e in listed),
        "bytes_steps": step_bytes,
        "bytes_total": total,
        "columns": columns,
        "summary": r.summary,
        "warnings": list(r.warnings),
    }
