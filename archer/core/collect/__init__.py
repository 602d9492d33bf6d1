"""Result tables of runs and sweeps (`archer collect`): discovery, metric summaries, influence
quality from traces, text formats and plots. Imports no torch; pyarrow only when a trace is read."""

from .runs import FAILED, FINISHED, INCOMPLETE, MISSING, RunEntry, find_runs
from .table import CollectTable, build_table

__all__ = [
    "FAILED",
    "FINISHED",
    "INCOMPLETE",
    "MISSING",
    "CollectTable",
    "RunEntry",
    "build_table",
    "find_runs",
]
