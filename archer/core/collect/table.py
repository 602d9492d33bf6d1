"""The collect table: one row per run, the config keys that differ as columns, then timings,
memory, influence counts, rewards and influence quality (docs/ablate-collect.md lists them all).

Columns that are empty for every run are dropped, so a CPU sweep shows no GPU memory and a run
without influence no influence timings. Rows keep raw values (floats, ints, bools, None); the
formatters in formats.py decide how they print.
"""

from __future__ import annotations

import fnmatch
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.core.influence_results import mean_agreement

from .quality import Quality, has_influence, run_quality
from .runs import MISSING, RunEntry, find_runs

# Keys that only say where things go: never a column even when they differ.
PLACEMENT_KEYS = ("trainer.out_dir", "trainer.run_name", "trainer.cache_dir", "trace.dir", "description")


def _median(v: list[float]) -> float:
    return float(statistics.median(v))


def _last(v: list[float]) -> float:
    return v[-1]


def _first(v: list[float]) -> float:
    return v[0]


# (column, reducer, metric keys tried in order, training steps only)
# Fallback keys are verl's names, for runs whose metrics kept them.
SUMMARIES: list[tuple[str, Callable[[list[float]], float], tuple[str, ...], bool]] = [
    ("step_s", _median, ("time/step", "timing_s/step"), True),
    ("rollout_s", _median, ("time/rollout", "timing_s/gen"), True),
    ("update_s", _median, ("time/update", "timing_s/update_actor"), True),
    ("influence_s", _median, ("time/influence",), True),
    ("infl_capture_s", _median, ("timing_s/influence_capture",), True),
    ("infl_solve_s", _median, ("timing_s/influence_solve",), True),
    ("infl_score_s", _median, ("timing_s/influence_score",), True),
    ("gpu_mem_gb", max, ("perf/peak_gpu_mem_gb",), True),
    ("cpu_mem_gb", max, ("perf/peak_cpu_mem_gb",), True),
    ("groups_selected", statistics.fmean, ("influence/groups_selected",), True),
    ("rows_emitted", statistics.fmean, ("influence/rows_emitted",), True),
    ("reward_start", _first, ("reward/mean",), True),
    ("reward_final", _last, ("reward/mean",), True),
    ("reward_best", max, ("reward/mean",), True),
    ("acc_final", _last, ("reward/accuracy",), True),
    ("acc_best", max, ("reward/accuracy",), True),
    ("val_acc_start", _first, ("val/accuracy",), False),
    ("val_acc_final", _last, ("val/accuracy",), False),
    ("val_acc_best", max, ("val/accuracy",), False),
]
QUALITY_COLUMNS = [
    "contrast",
    "auc",
    "auc_groups",
    "top20_overlap",
    "spearman",
    "spearman_ref",
    "trace_steps",
    "check_rho",
    "check_steps",
]
SWEEP_COLUMNS = ["attempts", "oom"]
HEAD = ["run", "status", "reason"]


@dataclass
class CollectTable:
    columns: list[str]
    rows: list[dict[str, Any]]
    config_columns: list[str]
    entries: list[RunEntry]
    quality: dict[str, Quality] = field(default_factory=dict)  # by run name
    warnings: list[str] = field(default_factory=list)
    reference: str | None = None
    metric_columns: list[str] = field(default_factory=list)  # asked for with --metrics


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_series(
    metrics: list[dict[str, Any]], keys: tuple[str, ...], training_only: bool = True
) -> list[tuple[int, float]]:
    """(step, value) of the first key that any row has; step 0 (validation before training) only
    when `training_only` is false."""
    for key in keys:
        pts = [
            (int(r.get("step") or 0), float(r[key]))
            for r in metrics
            if _finite(r.get(key)) and (not training_only or int(r.get("step") or 0) > 0)
        ]
        if pts:
            return pts
    return []


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    steps = [int(r.get("step") or 0) for r in metrics]
    out["steps"] = max([s for s in steps if s > 0], default=None)
    for col, fn, keys, training in SUMMARIES:
        pts = metric_series(metrics, keys, training)
        out[col] = fn([v for _, v in pts]) if pts else None
    return out


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


_UNKNOWN = object()


def _known(entry: RunEntry, flat: dict[str, Any], key: str) -> Any:
    """A run's value of `key`, or _UNKNOWN. A key its config.yaml lacks was not in the schema of the
    archer that wrote it (or the run has no config yet): unknown, not a difference. Only the free-form
    `verl` section, where a key is present only when someone set it, counts absence as a value."""
    if key in flat:
        return flat[key]
    if entry.config is not None and key.startswith("verl."):
        return None
    return _UNKNOWN


def differing_keys(entries: list[RunEntry]) -> list[str]:
    """Config keys whose known values differ between runs (a run without config.yaml knows only
    its sweep settings; see `_known`), in config order."""
    flats = [(e, e.flat_config) for e in entries]
    order: list[str] = []
    seen: set[str] = set()
    for _, flat in flats:
        for k in flat:
            if k not in seen:
                seen.add(k)
                order.append(k)
    out = []
    for key in order:
        if key in PLACEMENT_KEYS:
            continue
        values = {_canon(v) for e, flat in flats if (v := _known(e, flat, key)) is not _UNKNOWN}
        if len(values) > 1:
            out.append(key)
    return out


def _config_cell(entry: RunEntry, flat: dict[str, Any], key: str) -> Any:
    v = _known(entry, flat, key)
    if v is _UNKNOWN:
        return None
    # influence.* has no effect with influence off: leave it blank so the baseline row reads clearly
    if key.startswith("influence.") and key != "influence.enable" and flat.get("influence.enable") is False:
        return None
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def _pick_reference(entries: list[RunEntry], reference: str | None) -> RunEntry | None:
    from archer.errors import UsageError

    if reference is not None:
        for e in entries:
            if e.name == reference or e.path.name == reference:
                return e
        raise UsageError(f"--reference {reference}: no such run among {', '.join(e.name for e in entries)}")
    for e in entries:
        if e.status != MISSING and e.config_value("influence.enable") is True and has_influence(e.path):
            return e
    return None


def build_table(
    paths: list[Path],
    metric_globs: list[str] | None = None,
    reference: str | None = None,
    quality: bool = True,
) -> CollectTable:
    """Read every run under `paths` and assemble the table (never raises for a bad run)."""
    from archer.errors import ArcherError

    entries, warnings = find_runs(paths)
    config_cols = differing_keys([e for e in entries if e.config is not None or e.settings])
    ref = _pick_reference(entries, reference) if quality else None

    globs = [g.strip() for spec in (metric_globs or []) for g in spec.split(",") if g.strip()]
    all_keys = sorted({k for e in entries for r in e.metrics for k in r if k != "step"})
    extra: list[str] = []
    for g in globs:
        hits = [k for k in all_keys if fnmatch.fnmatchcase(k, g)]
        if not hits:
            warnings.append(f"--metrics {g}: no metric of these runs matches")
        extra += [k for k in hits if k not in extra]

    rows: list[dict[str, Any]] = []
    qualities: dict[str, Quality] = {}
    for e in entries:
        flat = e.flat_config
        row: dict[str, Any] = {"run": e.name, "status": e.status, "reason": e.reason}
        for key in config_cols:
            row[key] = _config_cell(e, flat, key)
        row.update(summarize(e.metrics))
        q = Quality()
        if quality and e.status != MISSING and e.path.is_dir() and _has_trace(e):
            try:
                use_ref = ref if ref is not None and ref is not e else None
                q = run_quality(
                    _trace_dir(e), _trace_dir(use_ref) if use_ref else None, use_ref.name if use_ref else None
                )
            except (
                ArcherError,
                OSError,
                ValueError,
            ) as err:  # a broken trace costs its columns, not the table
                warnings.append(f"{e.name}: trace not read ({getattr(err, 'message', None) or err})")
        qualities[e.name] = q
        row.update(
            {
                "contrast": q.contrast,
                "auc": q.auc,
                "auc_groups": q.auc_groups or None,
                "top20_overlap": q.top_overlap,
                "spearman": q.spearman,
                "spearman_ref": q.spearman_ref,
                "trace_steps": q.trace_steps,
            }
        )
        if quality and e.status != MISSING and e.path.is_dir():
            # `archer influence check`: predicted vs measured margin cost of removed token sets
            row["check_rho"], n_checked = mean_agreement(e.path)
            row["check_steps"] = n_checked or None
        if e.case is not None:
            row["attempts"] = len(e.case.attempts)
            row["oom"] = bool(e.case.oom)
        for k in extra:
            pts = metric_series(e.metrics, (k,), training_only=False)
            row[k] = pts[-1][1] if pts else _last_raw(e.metrics, k)
        row["path"] = str(e.path)
        rows.append(row)

    summary_cols = ["steps"] + [c for c, *_ in SUMMARIES]
    candidates = HEAD + config_cols + summary_cols + QUALITY_COLUMNS + SWEEP_COLUMNS + extra + ["path"]
    columns = [
        c
        for c in candidates
        if c in ("run", "status")
        or c in config_cols
        or c in extra
        or any(r.get(c) not in (None, "") for r in rows)
    ]
    for r in rows:
        for c in columns:
            r.setdefault(c, None)
    return CollectTable(
        columns=columns,
        rows=[{c: r[c] for c in columns} for r in rows],
        config_columns=config_cols,
        entries=entries,
        quality=qualities,
        warnings=warnings,
        reference=ref.name if ref else None,
        metric_columns=extra,
    )


def _last_raw(metrics: list[dict[str, Any]], key: str) -> Any:
    for r in reversed(metrics):
        if key in r and r[key] is not None:
            return r[key]
    return None


def _trace_dir(e: RunEntry) -> Path:
    custom = e.config_value("trace.dir")
    return Path(custom).expanduser() if custom else e.path / "trace"


def _has_trace(e: RunEntry) -> bool:
    return (_trace_dir(e) / "manifest.jsonl").exists()
