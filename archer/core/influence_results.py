"""The results file of `archer influence check` (<run>/influence_check.json): written by the check,
read by `archer collect` (its `check_rho` column) without torch."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from archer.core.run import atomic_write_text

RESULTS_FILE = "influence_check.json"
RESULTS_FORMAT = "archer-influence-check"


def save_results(run_dir: Path, steps: dict[int, dict[str, Any]]) -> Path:
    """Merge these steps' results into the run's results file (temp file + rename)."""
    path = Path(run_dir) / RESULTS_FILE
    merged = {str(k): v for k, v in read_results(run_dir).items()}
    merged.update({str(k): v for k, v in steps.items()})
    data = {
        "format": RESULTS_FORMAT,
        "version": 1,
        "steps": dict(sorted(merged.items(), key=lambda kv: int(kv[0]))),
    }
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def read_results(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The checked steps of a run (step -> result); {} when it was never checked."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        return {}
    return {int(k): v for k, v in (data.get("steps") or {}).items()}


def mean_agreement(run_dir: Path) -> tuple[float | None, int]:
    """(mean per-step Spearman of predicted vs measured removal cost, checked steps) of a run."""
    vals = [
        float(v["spearman"])
        for v in read_results(run_dir).values()
        if isinstance(v.get("spearman"), (int, float)) and math.isfinite(v["spearman"])
    ]
    return (sum(vals) / len(vals) if vals else None), len(vals)
