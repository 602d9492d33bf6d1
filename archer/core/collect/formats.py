"""The collect table as text: a Rich table, CSV, GitHub Markdown or JSON.

Numbers print with 4 significant digits in the table and Markdown (for reading), 6 in CSV and
JSON (for further work); a value that is not there is blank (`-` in the Rich table). `path` is
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


STATUS_STYLE = {"finished": "green", "failed": "red", "incomplete": "yellow", "missing": "dim"}


#: short headers for the screen (files keep the column names)
SCREEN_NAMES = {"step_s": "s/step", "val_acc": "val acc", "reward": "reward"}


def screen_headers(t: CollectTable) -> dict[str, str]:
    """On screen a config column is headed by its last key part when that is unambiguous and
    longer than 6 characters (`hessian_mode` rather than `influence.hessian_mode`, but
    `influence.enable` and `rollout.n` stay whole); files keep the full key."""
    # a short leaf says little alone (`enable`, `n`): those keep their section
    leaves = [c.rsplit(".", 1)[-1] if len(c.rsplit(".", 1)[-1]) > 6 else c for c in t.config_columns]
    out = {c: SCREEN_NAMES.get(c, c) for c in t.columns}
    for c, leaf in zip(t.config_columns, leaves):
        if leaves.count(leaf) == 1 and leaf not in t.columns:
            out[c] = leaf
    return out


def to_rich(t: CollectTable, title: str | None = None) -> Any:
    """A compact Rich table: short headers, long texts cut with an ellipsis (files keep them whole)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    cols = [c for c in t.columns if c not in SCREEN_HIDDEN]
    heads = screen_headers(t)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for c in cols:
        numeric = any(isinstance(r[c], (int, float, Span)) and not isinstance(r[c], bool) for r in t.rows)
        kw: dict[str, Any] = {"justify": "right" if numeric else "left", "no_wrap": True}
        if c == "reason":
            kw.update(overflow="ellipsis", max_width=36)
        elif c in t.config_columns or c == "run":
            kw.update(overflow="ellipsis", max_width=32)
        table.add_column(
            escape(heads[c]), header_style="bold cyan" if c in t.config_columns else "bold", **kw
        )
    for r in t.rows:
        cells = []
        for c in cols:
            text = escape(cell(r[c], 3 if c not in ("steps", "auc_groups", "trace_steps", "attempts") else 6))
            if not text:
                text = "[dim]-[/dim]"
            elif c == "status" and STATUS_STYLE.get(r[c]):
                text = f"[{STATUS_STYLE[r[c]]}]{text}[/]"
            cells.append(text)
        table.add_row(*cells)
    return table


def render(t: CollectTable, fmt: str) -> str:
    """Text of a non-table format."""
    return {"csv": to_csv, "json": to_json, "markdown": to_markdown}[fmt](t)
