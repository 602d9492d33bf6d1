"""Datasets archer writes and reads, in the row layout verl's RL dataset expects.

One row per problem:

- `prompt`: chat messages, `list<struct<role: string, content: string>>`
- `data_source`, `ability`: strings
- `reward_model`: `struct<ground_truth: string, style: string>`
- `extra_info`: `struct<index: int64, split: string, ...>` (each writer adds its own fields)

This module holds only that schema and the atomic parquet write every writer shares; the
writers (`synth`, `dapo_math`) and the reader (`loading`) import pyarrow inside functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from archer.errors import DataError

TRAIN_FILE = "train.parquet"
VAL_FILE = "val.parquet"


def verl_schema(extra_fields: Sequence[tuple[str, Any]] = ()) -> Any:
    """The pyarrow schema of a verl RL dataset; `extra_fields` (name, type or type name such as
    "int64") are appended to `extra_info`."""
    import pyarrow as pa

    extra_fields = [(name, pa.type_for_alias(t) if isinstance(t, str) else t) for name, t in extra_fields]

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema(
        [
            ("prompt", pa.list_(message)),
            ("data_source", pa.string()),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
            ("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string()), *extra_fields])),
        ]
    )


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} exists and is not a directory", hint="pass a directory to --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create output directory {out}: {e.strerror or e}", hint="check the path and permissions"
        ) from e
    return out


def write_split_rows(
    out_dir: str | os.PathLike, train: list[dict], val: list[dict], schema: Any
) -> dict[str, Path]:
    """A synthetic task's rows as `train.parquet` and `val.parquet` in `out_dir`, written
    together (write_tables_atomic); returns their paths."""
    import pyarrow as pa

    out = prepare_out_dir(out_dir)
    paths = {"train": out / TRAIN_FILE, "val": out / VAL_FILE}
    write_tables_atomic(
        {
            paths["train"]: pa.Table.from_pylist(train, schema=schema),
            paths["val"]: pa.Table.from_pylist(val, schema=schema),
        }
    )
    return paths


def write_tables_atomic(tables: Mapping[Path, Any]) -> None:
    """Write each table to a temporary file beside its target, then rename them all into place.

    A crash or a full disk never leaves a half-written `train.parquet` that a later run would read.
    """
    import pyarrow.parquet as pq

    temps: list[tuple[Path, Path]] = []
    try:
        for path, table in tables.items():
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            temps.append((tmp, path))
            pq.write_table(table, tmp, compression="zstd")
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as e:
        from archer.core.storage import disk_full_error

        full = disk_full_error(path, e)
        if full is not None:
            raise full from e
        raise DataError(
            f"cannot write {path}: {e.strerror or e}", hint="check free disk space and permissions"
        ) from e
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
