"""The per-token trace: one parquet file per rollout step, written in the background.

`build_step_table` makes a step table, `TraceWriter` writes it crash-safely, `TraceReader` reads
it back for the viewer, `collect` and sweeps. The format is described in docs/trace-format.md.
Imports only pyarrow, numpy and the standard library (no torch).
"""

from __future__ import annotations

from .reader import TraceReader, list_entropy, list_influence, list_row, list_values, row_dict
from .schema import (
    COLUMNS,
    FORMAT,
    LIST_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    build_step_table,
    step_file_name,
)
from .writer import TraceWriter, WriterStats, step_aggregates, step_is_written

__all__ = [
    "COLUMNS",
    "FORMAT",
    "LIST_COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SUMMARY_COLUMNS",
    "TraceReader",
    "TraceWriter",
    "WriterStats",
    "build_step_table",
    "list_entropy",
    "list_influence",
    "list_row",
    "list_values",
    "row_dict",
    "step_aggregates",
    "step_file_name",
    "step_is_written",
]
