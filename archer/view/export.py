"""Writing records as CSV or JSON lines, to a stream or atomically to a file.

A file appears under its name only once complete (temp file + rename), so an interrupted
export never leaves half a CSV that looks whole. Used by the viewer's exports and by
`archer trace export`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

FORMATS = ("csv", "jsonl")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A text file written to a hidden temp name and renamed into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_records(
    stream: IO[str], records: Iterable[dict[str, Any]], columns: Sequence[str], fmt: str
) -> int:
    """Write `records` (dicts keyed by `columns`; None = empty/null) and return how many."""
    n = 0
    if fmt == "csv":
        w = csv.writer(stream)
        w.writerow(columns)
        for rec in records:
            w.writerow(["" if rec.get(c) is None else rec.get(c) for c in columns])
            n += 1
    elif fmt == "jsonl":
        for rec in records:
            stream.write(json.dumps({c: rec.get(c) for c in columns}, ensure_ascii=False) + "\n")
            n += 1
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return n


def export_file(
    path: str | os.PathLike, records: Iterable[dict[str, Any]], columns: Sequence[str], fmt: str = "csv"
) -> int:
    """Write records to `path` atomically; returns the number of records."""
    with atomic_open(path) as f:
        return write_records(f, records, columns, fmt)


def to_text(records: Iterable[dict[str, Any]], columns: Sequence[str], fmt: str = "csv") -> str:
    buf = io.StringIO()
    write_records(buf, records, columns, fmt)
    return buf.getvalue()
