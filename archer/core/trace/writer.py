"""The trace writer: step tables go to parquet on a background thread, crash-safely.

Training hands a finished table to `TraceWriter.submit` and goes on; a thread compresses and
writes it. Each step file appears under its final name only once complete (temp file + rename),
its manifest line is appended only after that, and `latest_step.txt` only after the manifest, so
a reader of a live or killed run never sees half a step. `resume_after_step` repairs what a killed
run left behind so the resumed run continues without duplicate steps.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from archer.core.run import atomic_write_text
from archer.core.storage import DiskFullError, disk_full_error
from archer.errors import ArcherError, TraceError

from . import codec
from .schema import (
    DICTIONARY_COLUMNS,
    FORMAT,
    META_STEP,
    SCHEMA_VERSION,
    check_table,
    schema_metadata,
    step_file_name,
)

SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.jsonl"
LATEST_FILE = "latest_step.txt"
STEPS_DIR = "steps"


class TraceDiskFullError(DiskFullError, TraceError):
    """The trace's disk is full (a `TraceError` too, for callers that catch those)."""


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def step_is_written(step: int, write_every: int) -> bool:
    """Whether `step` goes into the trace: every `write_every`-th step, and always the first (step 1),
    so a run with a sparse trace still shows where it started. Independent of resumes."""
    return step <= 1 or step % write_every == 0


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_temp(name: str) -> bool:
    """Temp files of the writer and of atomic_write_text: hidden, with '.tmp' in the name."""
    return name.startswith(".") and ".tmp" in name


def _json_float(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def step_aggregates(table: pa.Table) -> dict[str, Any]:
    """The per-step numbers a manifest line carries, so a step list needs no step file."""
    n = table.num_rows
    reward = table.column("reward").to_numpy()
    finite = reward[~np.isnan(reward)]
    correct = table.column("correct")
    n_known = n - correct.null_count
    n_true = (pc.sum(correct).as_py() or 0) if n_known else 0
    e_sum, e_cnt = 0.0, 0
    for chunk in table.column("entropy").chunks:
        vals = chunk.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        ok = ~np.isnan(vals)
        e_sum += float(vals[ok].sum(dtype=np.float64))
        e_cnt += int(ok.sum())
    return {
        "n_responses": n,
        "n_tokens": int(pc.sum(table.column("response_length")).as_py() or 0),
        "reward_mean": _json_float(finite.mean(dtype=np.float64)) if len(finite) else None,
        "accuracy": _json_float(n_true / n_known) if n_known else None,
        "entropy_mean": _json_float(e_sum / e_cnt) if e_cnt else None,
        "influence_rows": n - table.column("influence").null_count,
    }


@dataclass(frozen=True)
class WriterStats:
    """What the engine reports as "trace write" cost."""

    steps_written: int
    steps_skipped: int
    bytes_written: int
    write_seconds: float  # time the background thread spent writing (not training time)
    queue_wait_seconds: float  # total time submit() blocked because the queue was full
    max_queue_wait_seconds: float
    pending: int  # steps submitted but not yet durable
    last_step: int | None  # last step made durable

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TraceWriter:
    """Write trace steps to `trace_dir` (normally `<run>/trace`) on a background thread.

    `summary` is the run metadata for summary.json (model and tokenizer paths, preset, git commit,
    ...); the writer adds `format`, `schema_version`, `archer_version` (if absent) and times.
    A fresh writer refuses a directory that already holds steps; pass `resume_after_step=k`
    to continue one (steps > k and debris of a crash are removed first). Steps must be submitted
    in increasing order. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        trace_dir: str | os.PathLike,
        summary: Mapping[str, Any],
        *,
        write_every: int = 1,
        fsync: bool = False,
        row_group_size: int = 64,
        compression_level: int = 3,
        max_queue: int = 4,
        resume_after_step: int | None = None,
        influence_storage: str = "auto",
    ):
        if write_every < 1:
            raise ValueError(f"write_every must be >= 1, got {write_every}")
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if not 1 <= compression_level <= 22:
            raise ValueError(f"compression_level must be in 1..22 (zstd), got {compression_level}")
        if resume_after_step is not None and resume_after_step < 0:
            raise ValueError(f"resume_after_step must be >= 0, got {resume_after_step}")
        if influence_storage not in codec.INFLUENCE_STORAGES:
            raise ValueError(
                f"influence_storage must be one of {', '.join(codec.INFLUENCE_STORAGES)}, "
                f"got {influence_storage!r}"
            )
        self.influence_storage = influence_storage
        self.dir = Path(trace_dir).expanduser()
        self.write_every = int(write_every)
        self.fsync = bool(fsync)
        self.row_group_size = int(row_group_size)
        self.compression_level = int(compression_level)
        self._steps_dir = self.dir / STEPS_DIR
        self._manifest = self.dir / MANIFEST_FILE
        self._latest = self.dir / LATEST_FILE
        self._steps_dir.mkdir(parents=True, exist_ok=True)

        if resume_after_step is None:
            self._check_fresh()
            last = None
            self._last_submitted: int | None = None
        else:
            last = self._repair(int(resume_after_step))
            self._last_submitted = int(resume_after_step)
        self._write_summary({**summary, "influence_storage": influence_storage}, resume_after_step)
        if not self._manifest.exists():
            # An empty manifest marks a live trace with no step yet (readers accept it).
            atomic_write_text(self._manifest, "", fsync=self.fsync)

        self._lock = threading.Lock()
        self._steps_written = 0
        self._steps_skipped = 0
        self._bytes = 0
        self._write_seconds = 0.0
        self._wait_total = 0.0
        self._wait_max = 0.0
        self._last_durable = last
        self._error: tuple[int, BaseException] | None = None
        self._error_reported = False
        self._closed = False
        self._q: queue.Queue[tuple[int, pa.Table] | None] = queue.Queue(maxsize=int(max_queue))
        # Daemon so a crashed trainer that never calls close() still exits; close() is the
        # only way to be sure everything submitted is on disk.
        self._thread = threading.Thread(target=self._run, name="archer-trace-writer", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(
        cls,
        trace_cfg: Any,
        run_dir: str | os.PathLike,
        summary: Mapping[str, Any],
        *,
        resume_after_step: int | None = None,
    ) -> TraceWriter:
        """A writer set up from the `trace` settings (a `TraceConfig`, or a mapping such as the one
        the verl engine carries; absent keys take the `TraceConfig` defaults). `dir` null means
        `<run>/trace`. The caller checks `enable` first; this only maps the settings."""
        from archer.core.config.schema import TraceConfig

        defaults = TraceConfig()

        def get(key: str) -> Any:
            if isinstance(trace_cfg, Mapping):
                value = trace_cfg.get(key, getattr(defaults, key))
            else:
                value = getattr(trace_cfg, key, getattr(defaults, key))
            return getattr(defaults, key) if value is None and key != "dir" else value

        trace_dir = Path(str(get("dir"))).expanduser() if get("dir") else Path(run_dir) / "trace"
        return cls(
            trace_dir,
            summary,
            write_every=int(get("write_every")),
            fsync=bool(get("fsync")),
            row_group_size=int(get("row_group_size")),
            compression_level=int(get("compression_level")),
            max_queue=int(get("max_queue")),
            resume_after_step=resume_after_step,
            influence_storage=str(get("influence_storage")),
        )

    # ---- public API -------------------------------------------------------------------------

    def should_write(self, step: int) -> bool:
        """Whether `submit(step, ...)` would write; lets the engine skip building the table."""
        return step_is_written(step, self.write_every)

    def submit(self, step: int, table: pa.Table) -> bool:
        """Queue `table` as `step`; returns False if `write_every` skips the step.

        Blocks only while `max_queue` steps are already waiting. Raises TraceError if an earlier
        write failed, ValueError if the table is not a v1 step table or the step does not
        increase.
        """
        self._raise_if_failed()
        if self._closed:
            raise TraceError("the trace writer is closed")
        step = int(step)
        if not self.should_write(step):
            with self._lock:
                self._steps_skipped += 1
            return False
        if self._last_submitted is not None and step <= self._last_submitted:
            raise ValueError(
                f"trace step {step} submitted after step {self._last_submitted}; steps must increase"
            )
        table = self._prepare(step, table)
        self._last_submitted = step
        t0 = time.perf_counter()
        self._q.put((step, table))
        waited = time.perf_counter() - t0
        with self._lock:
            self._wait_total += waited
            self._wait_max = max(self._wait_max, waited)
        return True

    def flush(self) -> None:
        """Wait until every submitted step is durable (call it before saving a checkpoint)."""
        self._raise_if_failed()
        self._q.join()
        self._raise_if_failed()

    def close(self) -> None:
        """Flush, stop the thread and stamp summary.json; raises a write failure not yet raised."""
        if not self._closed:
            self._closed = True
            self._q.put(None)
            self._thread.join()
            if self._error is None:
                try:
                    self._update_summary({"updated": _now()})
                except (OSError, ValueError) as e:
                    full = disk_full_error(self.dir / SUMMARY_FILE, e, TraceDiskFullError)
                    if full is not None:
                        raise full from e
                    raise TraceError(f"cannot update {self.dir / SUMMARY_FILE}: {e}") from e
        if self._error is not None and not self._error_reported:
            self._raise_if_failed()

    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(
                steps_written=self._steps_written,
                steps_skipped=self._steps_skipped,
                bytes_written=self._bytes,
                write_seconds=self._write_seconds,
                queue_wait_seconds=self._wait_total,
                max_queue_wait_seconds=self._wait_max,
                pending=self._q.unfinished_tasks,
                last_step=self._last_durable,
            )

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        try:  # do not hide the exception already in flight
            self.close()
        except ArcherError as e:
            if hasattr(exc, "add_note"):
                exc.add_note(f"also: {e}")

    # ---- submit side ------------------------------------------------------------------------

    def _prepare(self, step: int, table: pa.Table) -> pa.Table:
        if not isinstance(table, pa.Table):
            raise ValueError(f"submit() takes a pyarrow Table, got {type(table).__name__}")
        check_table(table)
        meta = dict(table.schema.metadata or {})
        if META_STEP in meta and meta[META_STEP] != str(step).encode():
            raise ValueError(f"table was built for step {meta[META_STEP].decode()}, submitted as {step}")
        if table.num_rows:
            mm = pc.min_max(table.column("step")).as_py()
            if mm["min"] != step or mm["max"] != step:
                raise ValueError(f"table's step column holds {mm}, submitted as step {step}")
        meta.update(schema_metadata(step))
        return table.replace_schema_metadata(meta)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            self._error_reported = True
            step, exc = self._error
            full = disk_full_error(self._steps_dir / step_file_name(step), exc, TraceDiskFullError)
            if full is not None:
                raise full from exc
            raise TraceError(
                f"writing trace step {step} to {self.dir} failed: {type(exc).__name__}: {exc}",
                hint="check free disk space and permissions of the trace directory",
            ) from exc

    # ---- background thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if self._error is None:  # after a failure, drain without writing
                    step, table = item
                    try:
                        self._write(step, table)
                    except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
                        self._error = (step, e)
            finally:
                self._q.task_done()

    def _write(self, step: int, table: pa.Table) -> None:
        t0 = time.perf_counter()
        name = step_file_name(step)
        final = self._steps_dir / name
        # The temp name does not end in .parquet, so 'steps/*.parquet' globs never match it.
        tmp = self._steps_dir / f".{name}.tmp-{os.getpid()}"
        table = codec.encode(table, self.influence_storage)  # float16 or rank codes (codec.py)
        names = table.schema.names
        storage = codec.storage_of(table.schema)
        dictionary = [c for c in DICTIONARY_COLUMNS if c in names]
        if storage == codec.STORAGE_CODES:  # <= 16 codes: 4-bit dictionary indices, zstd on top
            dictionary.append("influence.list.element")
        try:
            pq.write_table(
                table,
                tmp,
                compression="zstd",
                compression_level=self.compression_level,
                use_dictionary=dictionary,
                row_group_size=self.row_group_size,
                # min/max of the scaled float16 influence mean nothing without the step's scale
                write_statistics=[c for c in names if c not in ("influence", codec.LEVELS_COLUMN)],
                write_page_checksum=True,  # readers verify it: bit rot is an error, not wrong numbers
            )
            if self.fsync:
                _fsync_path(tmp)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):  # no half file left behind (a full disk, a bad table)
                tmp.unlink()
            raise
        if self.fsync:
            _fsync_path(self._steps_dir)
        size = final.stat().st_size
        entry = {
            "step": step,
            "file": f"{STEPS_DIR}/{name}",
            **step_aggregates(table),
            # which storage the step's scores use (float16 or codes: codec.py); absent without influence
            **(
                {"influence_storage": storage}
                if table.column("influence").null_count < table.num_rows
                else {}
            ),
            "bytes": size,
            "written_at": _now(),
            "write_seconds": round(time.perf_counter() - t0, 4),
        }
        self._append_manifest(json.dumps(entry, allow_nan=False) + "\n")
        atomic_write_text(self._latest, f"{step}\n", fsync=self.fsync)
        if self.fsync:
            _fsync_path(self.dir)
        with self._lock:
            self._steps_written += 1
            self._bytes += size
            self._write_seconds += time.perf_counter() - t0
            self._last_durable = step

    def _append_manifest(self, line: str) -> None:
        data = line.encode()
        fd = os.open(self._manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:  # one write() in practice; a kill leaves a whole line or a partial last one
                data = data[os.write(fd, data) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    # ---- directory set-up -------------------------------------------------------------------

    def _check_fresh(self) -> None:
        has_lines = self._manifest.exists() and self._manifest.read_bytes().strip() != b""
        has_files = any(p.suffix == ".parquet" for p in self._steps_dir.iterdir())
        if has_lines or has_files:
            raise TraceError(
                f"trace directory {self.dir} already holds steps",
                hint="resume the run (the writer then takes resume_after_step), "
                "or point trace.dir at an empty directory",
            )
        self._remove_temps()

    def _repair(self, k: int) -> int | None:
        """Cut the trace back to steps <= k; return the last step kept.

        Order matters for a kill during the repair itself: latest_step.txt first (never ahead of
        the manifest), then the manifest (atomically), then files the manifest no longer names.
        """
        kept: dict[int, str] = {}
        if self._manifest.exists():
            raw = self._manifest.read_bytes()
            # A partial trailing line fails to parse and is dropped, as readers ignore it too.
            for line in raw.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    step, rel = int(e["step"]), str(e["file"])
                except (ValueError, KeyError, TypeError):
                    continue
                if step <= k and (self.dir / rel).is_file():
                    kept[step] = line.decode()  # a duplicate step (never written) keeps the last
        order = sorted(kept)
        last = order[-1] if order else None
        if last is None:
            self._latest.unlink(missing_ok=True)
        else:
            atomic_write_text(self._latest, f"{last}\n", fsync=self.fsync)
        atomic_write_text(self._manifest, "".join(kept[s] + "\n" for s in order), fsync=self.fsync)
        if self.fsync:
            _fsync_path(self.dir)
        named = {json.loads(kept[s])["file"] for s in order}
        for p in self._steps_dir.iterdir():
            if p.suffix == ".parquet" and f"{STEPS_DIR}/{p.name}" not in named:
                p.unlink(missing_ok=True)
        self._remove_temps()
        return last

    def _remove_temps(self) -> None:
        for d in (self.dir, self._steps_dir):
            for p in d.iterdir():
                if _is_temp(p.name) and p.is_file():
                    p.unlink(missing_ok=True)

    def _write_summary(self, summary: dict[str, Any], resume_after_step: int | None) -> None:
        path = self.dir / SUMMARY_FILE
        now = _now()
        old: dict[str, Any] = {}
        if resume_after_step is not None and path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                old = {}
            v = old.get("schema_version")
            if isinstance(v, int) and v > SCHEMA_VERSION:
                raise TraceError(
                    f"{path} is trace schema v{v}; this archer writes v{SCHEMA_VERSION}",
                    hint="resume with the archer version that started the run",
                )
        if "archer_version" not in summary:
            from archer import __version__

            summary["archer_version"] = __version__
        merged = {**old, **summary}
        merged["format"] = FORMAT
        merged["schema_version"] = SCHEMA_VERSION
        merged["created"] = old.get("created") or now
        merged["updated"] = now
        if resume_after_step is not None and old:
            merged["resumes"] = list(old.get("resumes") or []) + [
                {"at": now, "after_step": resume_after_step}
            ]
        self._write_summary_file(merged)

    def _update_summary(self, changes: Mapping[str, Any]) -> None:
        path = self.dir / SUMMARY_FILE
        data = json.loads(path.read_text())
        data.update(changes)
        self._write_summary_file(data)

    def _write_summary_file(self, data: Mapping[str, Any]) -> None:
        atomic_write_text(
            self.dir / SUMMARY_FILE, json.dumps(data, indent=2, default=str) + "\n", fsync=self.fsync
        )
