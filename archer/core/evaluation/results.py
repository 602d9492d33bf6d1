"""Metrics of graded samples, per data source and overall: avg@n, pass@k, and what explains them.

Everything here is computed from per-sample rows (problem, data_source, correct, reward,
response_length, truncated), so `results.json` can always be rebuilt from the saved samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from archer.core.evaluation.passk import pass_at_k

ALL = "all"


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def _group_stats(
    per_problem: list[tuple[int, int]],
    rewards: list[float],
    lengths: list[int],
    truncated: list[bool],
    n: int,
    ks: Sequence[int],
) -> dict[str, Any]:
    acc = [c / m for m, c in per_problem]
    stats: dict[str, Any] = {
        "problems": len(per_problem),
        "samples": sum(m for m, _ in per_problem),
        "correct": sum(c for _, c in per_problem),
        f"avg@{n}": _mean(acc),
        # standard error of avg@n over problems: how much it would move with other problems
        "avg_stderr": (
            math.sqrt(sum((a - _mean(acc)) ** 2 for a in acc) / (len(acc) - 1)) / math.sqrt(len(acc))
            if len(acc) > 1
            else math.nan
        ),
    }
    for k in ks:
        vals = [pass_at_k(m, c, k) for m, c in per_problem if m >= k]
        stats[f"pass@{k}"] = _mean(vals)
    stats["reward_mean"] = _mean(rewards)
    stats["response_length_mean"] = _mean([float(x) for x in lengths])
    stats["truncated_frac"] = _mean([1.0 if t else 0.0 for t in truncated])
    return stats


def summarize(rows: Iterable[dict[str, Any]], *, n: int, ks: Sequence[int]) -> dict[str, dict[str, Any]]:
    """{data_source: stats, ..., "all": stats} from per-sample rows (sources sorted by name)."""
    by_problem: dict[int, list[int]] = {}  # problem -> [samples, correct]
    source_of: dict[int, str] = {}
    extras: dict[str, tuple[list[float], list[int], list[bool]]] = {}
    for r in rows:
        pid = int(r["problem"])
        src = str(r["data_source"])
        cnt = by_problem.setdefault(pid, [0, 0])
        cnt[0] += 1
        cnt[1] += 1 if r["correct"] else 0
        source_of[pid] = src
        for key in (src, ALL):
            rw, ln, tr = extras.setdefault(key, ([], [], []))
            rw.append(float(r["reward"]))
            ln.append(int(r["response_length"]))
            tr.append(bool(r["truncated"]))
    out: dict[str, dict[str, Any]] = {}
    if not by_problem:
        return out
    sources = sorted(set(source_of.values()))
    for src in sources:
        pp = [(m, c) for pid, (m, c) in sorted(by_problem.items()) if source_of[pid] == src]
        out[src] = _group_stats(pp, *extras[src], n=n, ks=ks)
    out[ALL] = _group_stats([(m, c) for _, (m, c) in sorted(by_problem.items())], *extras[ALL], n=n, ks=ks)
    return out


def table_rows(table: Any) -> list[dict[str, Any]]:
    """The columns `summarize` needs, as row dicts, from a pyarrow table of samples."""
    cols = ["problem", "data_source", "correct", "reward", "response_length", "truncated"]
    return table.select(cols).to_pylist()


def json_ready(value: Any, digits: int = 6) -> Any:
    """Floats rounded, NaN/inf as null, recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v, digits) for v in value]
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    return value
