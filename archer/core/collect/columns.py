"""Which columns of the collect table to show, in what order, and how to sort its rows.

The full table has a column for every differing setting, timing, memory figure, reward summary
and quality number (about 26 for an influence sweep): right for CSV, Markdown and JSON, unreadable
in a terminal. On screen the default is a short set that answers "what changed and what did it
do": run, status (only when some run did not finish), the settings that differ, reward and
validation accuracy from start to end, seconds per step and the influence quality. `--columns`
picks others (names, globs, `default`, `all`), `--sort` orders the rows.

Two columns exist only here: `reward` and `val_acc`, start → end. On screen they are one cell
("0.416→0.641"); in files they stand for their two raw columns (`reward_start`, `reward_final`).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from dataclasses import replace
from typing import Any

from .runs import FINISHED
from .table import CollectTable

#: derived column -> (start column, end column)
SPANS: dict[str, tuple[str, str]] = {
    "reward": ("reward_start", "reward_final"),
    "val_acc": ("val_acc_start", "val_acc_final"),
}
#: the short set, in order; "status" only when a run did not finish, the settings after it
SHORT_TAIL = ("reward", "val_acc", "step_s", "auc", "spearman", "check_rho")
DEFAULT_WORDS = ("default", "short")
ALL_WORDS = ("all", "wide")


def _present(t: CollectTable, column: str) -> bool:
    if column in SPANS:
        return any(c in t.columns for c in SPANS[column])
    return column in t.columns


def short_columns(t: CollectTable) -> list[str]:
    """The default screen columns of `t` (only those that have a value somewhere), then the
    `--metrics` columns asked for."""
    cols = ["run"]
    if any(r.get("status") != FINISHED for r in t.rows):
        cols.append("status")
    cols += t.config_columns
    cols += [c for c in SHORT_TAIL if _present(t, c)]
    return cols + [c for c in t.metric_columns if c not in cols]


def available(t: CollectTable) -> list[str]:
    """Every name `--columns` and `--sort` accept for `t`."""
    return list(t.columns) + [c for c in SPANS if _present(t, c)]


def resolve(t: CollectTable, spec: list[str] | None, screen: bool) -> list[str]:
    """The columns to show for `--columns` specs (comma-separated, repeatable; names, globs,
    `default`, `all`). Without a spec: the short set on screen, every column in files."""
    from archer.errors import UsageError

    if not spec:
        return short_columns(t) if screen else list(t.columns)
    names = available(t)
    out: list[str] = []
    for part in (p.strip() for s in spec for p in s.split(",")):
        if not part:
            continue
        if part in DEFAULT_WORDS:
            hits = short_columns(t)
        elif part in ALL_WORDS:
            hits = list(t.columns)
        elif any(ch in part for ch in "*?["):
            hits = [n for n in names if fnmatch.fnmatchcase(n, part)]
            if not hits:
                raise UsageError(f"--columns {part}: no column matches", hint=_choices(names))
        elif part in names:
            hits = [part]
        else:
            near = difflib.get_close_matches(part, names, n=3)
            did = f"did you mean {', '.join(near)}? " if near else ""
            raise UsageError(f"--columns {part}: no such column", hint=did + _choices(names))
        out += [h for h in hits if h not in out]
    return out


def _choices(names: list[str]) -> str:
    return "columns: " + ", ".join(names) + " (or default, all, a glob such as '*_s')"


def project(t: CollectTable, columns: list[str], screen: bool) -> CollectTable:
    """`t` with only `columns`. On screen a span column becomes one "start→end" cell; in files it
    expands to its two raw columns."""
    if not screen:
        flat: list[str] = []
        for c in columns:
            for x in SPANS.get(c, (c,)):
                if x in t.columns and x not in flat:
                    flat.append(x)
        return replace(t, columns=flat, rows=[{c: r.get(c) for c in flat} for r in t.rows])
    rows = []
    for r in t.rows:
        row = {}
        for c in columns:
            if c in SPANS:
                a, b = (r.get(x) for x in SPANS[c])
                row[c] = Span(a, b)
            else:
                row[c] = r.get(c)
        rows.append(row)
    return replace(t, columns=list(columns), rows=rows)


class Span:
    """A start → end pair shown in one cell; compares by its end (then its start)."""

    def __init__(self, start: Any, end: Any):
        self.start, self.end = start, end

    def key(self) -> tuple[Any, Any]:
        return (self.end, self.start)

    def __repr__(self) -> str:
        return f"Span({self.start!r}, {self.end!r})"


def _sort_key(v: Any) -> tuple[int, Any]:
    """Missing values last; numbers before text; bools as numbers."""
    if isinstance(v, Span):
        v = v.end if v.end is not None else v.start
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return (2, 0)
    if isinstance(v, (int, float)):
        return (0, float(v))
    return (1, str(v))


def sort_rows(t: CollectTable, spec: str | None) -> CollectTable:
    """Rows ordered by column `spec` (`-col`: descending); a span column sorts by its end value.
    Missing values stay last either way. Stable: equal rows keep their collect order."""
    from archer.errors import UsageError

    if not spec:
        return t
    desc = spec.startswith("-")
    key = spec[1:] if desc else spec
    names = available(t)
    if key not in names:
        near = difflib.get_close_matches(key, names, n=3)
        did = f"did you mean {', '.join(near)}? " if near else ""
        raise UsageError(f"--sort {spec}: no such column", hint=did + _choices(names))
    src = SPANS.get(key, (key,))[-1] if key in SPANS else key
    if key in SPANS and src not in t.columns:
        src = SPANS[key][0]
    present = [r for r in t.rows if _sort_key(r.get(src))[0] < 2]
    missing = [r for r in t.rows if _sort_key(r.get(src))[0] == 2]
    present.sort(key=lambda r: _sort_key(r.get(src)), reverse=desc)
    return replace(t, rows=present + missing)
