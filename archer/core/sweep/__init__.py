"""Ablation sweeps: grid files, case ids, the sweep runner and its `sweep.json` (`archer ablate`).

Imports only the standard library and archer's config machinery at module level; torch is only
ever imported by the child `archer train` processes.
"""

from .grid import BASELINE_ID, Case, case_id, expand_grid, load_grid
from .runner import (
    LOG_FILE,
    OFFLOAD_OVERRIDE,
    SweepInterrupted,
    SweepRunner,
    cases_to_run,
    failure_reason,
    is_oom,
)
from .state import SWEEP_FILE, Attempt, CaseRecord, Sweep

__all__ = [
    "BASELINE_ID",
    "LOG_FILE",
    "OFFLOAD_OVERRIDE",
    "SWEEP_FILE",
    "Attempt",
    "Case",
    "CaseRecord",
    "Sweep",
    "SweepInterrupted",
    "SweepRunner",
    "case_id",
    "cases_to_run",
    "expand_grid",
    "failure_reason",
    "is_oom",
    "load_grid",
]
