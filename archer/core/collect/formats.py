"""The collect table as text for files and pipes: CSV, GitHub Markdown or JSON (the Rich table
for the screen is archer/cli/collect_table.py).

Numbers print with 4 significant digits in the table and Markdown (for reading), 6 in CSV and
JSON (for further work); a value that is not there is blank. `path` is
only in CSV and JSON: on screen the run name says enough.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from .columns import Span
from .table import CollectTable

FORMATS = ("table", "csv", "markdown", "json")
SCREEN_HIDDEN = ("path",)


def cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, Span):
        if value.start is None and value.end is None:
            return ""
        return f"{cell(value.start, digits) or '-'}→{cell(value.end, digits) or '-'}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.{digits}g}"
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def to_csv(t: CollectTable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.columns)
    for r in t.rows:
        w.writerow([cell(r[c], 6) for c in t.columns])
    return buf.getvalue()


def to_json(t: CollectTable) -> str:
    return json.dumps([{c: _json_value(r[c]) for c in t.columns} for r in t.rows], indent=2) + "\n"


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(t: CollectTable) -> str:
    cols = [c for c in t.columns if c not in SCREEN_HIDDEN]
    numeric = {
        c for c in cols if any(isinstance(r[c], (int, float)) and not isinstance(r[c], bool) for r in t.rows)
    }
    lines = [
        "| " + " | ".join(_md(c) for c in cols) + " |",
        "| " + " | ".join("---:" if c in numeric else "---" for c in cols) + " |",
    ]
    for r in t.rows:
        lines.append("| " + " | ".join(_md(cell(r[c])) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def render(t: CollectTable, fmt: str) -> str:
    """Text of a non-table format."""
    return {"csv": to_csv, "json": to_json, "markdown": to_markdown}[fmt](t)
