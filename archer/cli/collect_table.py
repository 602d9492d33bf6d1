"""`archer collect` on screen: a compact Rich table of a CollectTable (short headers, long texts
cut with an ellipsis, status coloured); files keep every column whole (archer/core/collect/formats.py)."""

from __future__ import annotations

from typing import Any

from archer.core.collect.columns import Span
from archer.core.collect.formats import SCREEN_HIDDEN, cell
from archer.core.collect.table import CollectTable

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
            digits = 6 if c in ("steps", "auc_groups", "trace_steps", "check_steps", "attempts") else 3
            text = escape(cell(r[c], digits))
            if not text:
                text = "[dim]-[/dim]"
            elif c == "status" and STATUS_STYLE.get(r[c]):
                text = f"[{STATUS_STYLE[r[c]]}]{text}[/]"
            cells.append(text)
        table.add_row(*cells)
    return table
