"""Reading traces: the viewer, `collect` and sweeps go through `TraceReader`.

Every problem a user can meet (no trace, a newer schema, a truncated file) becomes a TraceError
whose message names the file, because the viewer shows these messages in-app. Token columns are
turned into numpy through their flat values and offsets, never element by element.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from archer.errors import TraceError

from . import codec
from .schema import (
    FORMAT,
    META_SCHEMA_VERSION,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    influence_contrast,
    parse_manifest,
    step_file_name,
)
from .writer import LATEST_FILE, MANIFEST_FILE, STEPS_DIR, SUMMARY_FILE

# --------------------------------------------------------------------------------------------
# list columns -> numpy
# --------------------------------------------------------------------------------------------


def _single_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def list_values(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column: row i is `values[offsets[i]:offsets[i+1]]`.

    Zero-copy for a one-chunk column. Trace files store null rows (influence not computed) as
    empty slices; tell null from empty with `col.is_null()`.
    """
    arr = _single_array(col)
    if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
        raise ValueError(f"not a list column: {arr.type}")
    offsets = arr.offsets.to_numpy()  # absolute into .values, which ignores slicing
    values = arr.values.to_numpy(zero_copy_only=False)
    return values, offsets


def list_row(table: pa.Table, column: str, row: int, dtype: Any = None) -> np.ndarray | None:
    """Row `row` of list column `column` as numpy (None for a null row), without touching others."""
    col = table.column(column)
    if not 0 <= row < len(col):
        raise IndexError(f"row {row} out of range for {len(col)} rows")
    for chunk in col.chunks:  # find the chunk without combining them
        if row < len(chunk):
            break
        row -= len(chunk)
    if chunk.null_count and not chunk[row].is_valid:
        return None
    off = chunk.offsets
    lo, hi = off[row].as_py(), off[row + 1].as_py()
    out = chunk.values.slice(lo, hi - lo).to_numpy(zero_copy_only=False)
    return out if dtype is None else out.astype(dtype, copy=False)


def list_entropy(table: pa.Table, row: int) -> np.ndarray:
    """Entropy of one response as float32 (stored as float16)."""
    out = list_row(table, "entropy", row, np.float32)
    assert out is not None  # entropy is non-nullable in v1
    return out


def list_influence(table: pa.Table, row: int) -> np.ndarray | None:
    """Influence of one response as float32 (NaN = token not captured); None if not computed."""
    return list_row(table, "influence", row, np.float32)


def row_dict(table: pa.Table, row: int) -> dict[str, Any]:
    """One row as a dict: list columns as numpy arrays (or None), scalars as Python values."""
    out: dict[str, Any] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            out[name] = list_row(table, name, row)
        else:
            out[name] = col[row].as_py()
    return out


# --------------------------------------------------------------------------------------------
# the reader
# --------------------------------------------------------------------------------------------


def check_not_npz_trace(p: Path) -> None:
    """An old .npz trace (at `p` or `p/trace`) is not "truncated or corrupt": say how to convert it."""
    from .npz_import import looks_like_npz_trace

    old = looks_like_npz_trace(p) or looks_like_npz_trace(p / "trace")
    if old is not None:
        raise TraceError(
            f"{old} holds a trace of the original .npz layout (Archer2.0), which archer reads "
            "only after converting it",
            hint=f"convert it: archer trace import-npz {old} NEW_DIR, then open NEW_DIR",
        )


class TraceReader:
    """Read a trace directory, or the `trace/` of a run directory; safe on a live run.

    The manifest is re-read (when it changed) on every call, so a viewer that polls `steps()`
    follows a running training. Problems that do not stop reading go to `.warnings`.
    """

    def __init__(self, path: str | os.PathLike):
        p = Path(path).expanduser()
        if not p.exists():
            raise TraceError(
                f"no trace at {p}: the directory does not exist",
                hint="pass a run directory (one with trace/) or a trace directory",
            )
        check_not_npz_trace(p)
        if (p / MANIFEST_FILE).exists() or (p / SUMMARY_FILE).exists():
            self.dir = p
        elif (p / "trace").is_dir():
            self.dir = p / "trace"
        else:
            raise TraceError(
                f"{p} holds no trace (neither manifest.jsonl nor a trace/ directory)",
                hint="pass a run directory (one with trace/) or a trace directory; "
                "runs started with trace.enable=false have no trace",
            )
        self._manifest_path = self.dir / MANIFEST_FILE
        if not self._manifest_path.exists():
            raise TraceError(
                f"{self.dir} has no {MANIFEST_FILE}",
                hint="the run has not started writing its trace yet, or this is not an archer trace",
            )
        self.warnings: list[str] = []
        self.summary: dict[str, Any] = self._load_summary()
        self._cache_key: tuple[int, int, int] | None = None
        self._entries: list[dict[str, Any]] = []
        self._by_step: dict[int, dict[str, Any]] = {}

    # ---- run level --------------------------------------------------------------------------

    def _warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def _load_summary(self) -> dict[str, Any]:
        path = self.dir / SUMMARY_FILE
        if not path.exists():
            self._warn(f"{path} is missing; run metadata unknown")
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise TraceError(f"cannot read {path}: {e}", hint="the file is corrupt") from e
        if not isinstance(data, dict) or data.get("format", FORMAT) != FORMAT:
            raise TraceError(f"{path} is not an archer trace summary")
        _check_version(data.get("schema_version"), path)
        return data

    @property
    def influence_contrast(self) -> str | None:
        """`include` or `leave_one_out`: the contrast the trace's influence used (None without)."""
        return influence_contrast(self.summary)

    @property
    def schema_version(self) -> int:
        return int(self.summary.get("schema_version", SCHEMA_VERSION))

    def latest_step(self) -> int | None:
        """The step in latest_step.txt (a cheap "has the run moved on?" probe), None if absent."""
        try:
            return int((self.dir / LATEST_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    def manifest(self) -> list[dict[str, Any]]:
        """Manifest entries sorted by step; a truncated last line (a run being killed) is ignored."""
        try:
            st = self._manifest_path.stat()
        except FileNotFoundError as e:
            raise TraceError(f"{self._manifest_path} disappeared") from e
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._cache_key:
            text = self._manifest_path.read_bytes().decode("utf-8", errors="replace")
            by_step = parse_manifest(
                text,
                lambda step: f"{STEPS_DIR}/{step_file_name(step)}",
                self._warn,
                source=str(self._manifest_path),
            )
            self._by_step = by_step
            self._entries = [by_step[s] for s in sorted(by_step)]
            self._cache_key = key
        return list(self._entries)

    def steps(self) -> list[int]:
        """Steps whose file exists, in order. A manifest entry without its file is skipped and
        noted in `.warnings` (normal operation never produces one)."""
        out = []
        for e in self.manifest():
            if (self.dir / e["file"]).is_file():
                out.append(int(e["step"]))
            else:
                self._warn(f"step {e['step']}: {self.dir / e['file']} is missing (skipped)")
        return out

    def step_info(self, step: int) -> dict[str, Any]:
        """The manifest entry of `step` (counts, bytes, reward_mean, accuracy, entropy_mean, ...)."""
        self.manifest()
        try:
            return dict(self._by_step[int(step)])
        except KeyError:
            have = sorted(self._by_step)
            span = f"steps {have[0]}..{have[-1]}" if have else "no steps yet"
            raise TraceError(f"step {step} is not in the trace at {self.dir} ({span})") from None

    # ---- step files -------------------------------------------------------------------------

    def step_path(self, step: int) -> Path:
        return self.dir / self.step_info(step)["file"]

    @contextlib.contextmanager
    def _open(self, step: int) -> Iterator[pq.ParquetFile]:
        """The step's ParquetFile; any read failure inside the block becomes a TraceError naming
        the file (a corrupt data page only shows up when it is read, not when the footer is)."""
        path = self.step_path(step)
        try:
            with pq.ParquetFile(path, page_checksum_verification=True) as pf:
                meta = pf.schema_arrow.metadata or {}
                raw = meta.get(META_SCHEMA_VERSION)
                _check_version(int(raw) if raw is not None and raw.isdigit() else raw, path)
                stored = codec.STORED_COLUMNS if codec.is_encoded(pf.schema_arrow) else codec.COLUMNS
                missing = [c for c in stored if c not in pf.schema_arrow.names]
                if missing:  # a foreign parquet listed in the manifest
                    raise TraceError(
                        f"{path} (step {step}) is not an archer trace step: it lacks the columns "
                        f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}",
                        hint=f"remove its line from {self._manifest_path}, or put the step's own file back",
                    )
                yield pf
        except FileNotFoundError as e:
            raise TraceError(f"step {step}: {path} is missing") from e
        except (pa.ArrowException, OSError) as e:
            raise TraceError(f"cannot read {path}: {e}", hint="the step file is truncated or corrupt") from e

    def schema(self, step: int) -> pa.Schema:
        """The Arrow schema of a step file as stored (v2/v3: float16 `influence`, the influence
        summaries only for long responses, or v3's int8 rank codes and `influence_levels`; v1: the
        logical columns), plus any extra ones."""
        with self._open(step) as pf:
            return pf.schema_arrow

    def num_rows(self, step: int) -> int:
        """Responses in a step, from the parquet footer alone."""
        with self._open(step) as pf:
            return pf.metadata.num_rows

    def read_step(self, step: int, columns: Sequence[str] | None = None) -> pa.Table:
        """A whole step, or only `columns` (parquet is columnar: unread columns cost nothing)."""
        with self._open(step) as pf:
            return self._read(pf, self._columns(pf, columns), lambda cols: pf.read(columns=cols))

    def step_overview(self, step: int) -> pa.Table:
        """The per-response summary columns of a step (no token lists): the response list view.
        In a v2 step of short responses the influence summaries come from its `influence` column."""
        with self._open(step) as pf:
            names = set(self._logical_names(pf))
            cols = [c for c in SUMMARY_COLUMNS if c in names]
            return self._read(pf, cols, lambda c: pf.read(columns=c))

    def read_response(self, step: int, row: int, columns: Sequence[str] | None = None) -> dict[str, Any]:
        """One response as a dict (see `row_dict`), reading only the row group that holds it."""
        with self._open(step) as pf:
            cols = self._columns(pf, columns)
            md = pf.metadata
            if not 0 <= row < md.num_rows:
                raise IndexError(f"step {step} has {md.num_rows} responses; row {row} is out of range")
            start = 0
            for rg in range(md.num_row_groups):
                n = md.row_group(rg).num_rows
                if row < start + n:
                    break
                start += n
            return row_dict(self._read(pf, cols, lambda c: pf.read_row_group(rg, columns=c)), row - start)

    @staticmethod
    def _read(pf: pq.ParquetFile, columns: list[str] | None, read: Any) -> pa.Table:
        """`read(stored columns)` of what gives `columns`, decoded to the logical table."""
        schema = pf.schema_arrow
        return codec.decode(read(codec.columns_to_read(schema, columns)), schema.metadata, columns)

    @staticmethod
    def _logical_names(pf: pq.ParquetFile) -> list[str]:
        names = pf.schema_arrow.names
        if codec.is_encoded(pf.schema_arrow):
            extra = [c for c in names if c not in codec.COLUMNS and c != codec.LEVELS_COLUMN]
            return list(codec.COLUMNS) + extra
        return list(names)

    @classmethod
    def _columns(cls, pf: pq.ParquetFile, columns: Iterable[str] | None) -> list[str] | None:
        if columns is None:
            return None
        cols = list(columns)
        names = cls._logical_names(pf)
        unknown = [c for c in cols if c not in names]
        if unknown:
            raise ValueError(f"unknown trace column(s) {unknown}; this file has {names}")
        return cols

    def __repr__(self) -> str:
        return f"TraceReader({str(self.dir)!r})"


def _check_version(version: Any, path: Path) -> None:
    if version is None:
        return
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise TraceError(
            f"{path} uses trace schema v{version}, but this archer reads schema v{SCHEMA_VERSION}",
            hint="upgrade archer to read this trace",
        )
