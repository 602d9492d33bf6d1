"""The trace step table: one row per response, token data as list columns.

`SCHEMA` is the logical table, the same since v1: what `build_step_table` returns and what every
reader gets back. How schema v2/v3 store it on disk (float16 influence, derived summaries; rank
codes for long responses) is in `codec.py`; v1 files stored this table as it is.

Everything here is numpy/pyarrow only, so the viewer, `collect` and sweeps can read traces
without importing torch. `build_step_table` turns one rollout step into an Arrow table; the
per-token columns are assembled from concatenated numpy values plus offsets, so the cost is a
handful of vectorised copies however many tokens a step holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 3
FORMAT = "archer-trace"

# Keys of the parquet key-value metadata of every step file.
META_SCHEMA_VERSION = b"archer.schema_version"
META_STEP = b"archer.step"
META_FORMAT = b"archer.format"

#: The v1 (logical) columns in order, with their Arrow types. `nullable=False` fields are REQUIRED in
#: parquet; the nullable ones are null when the value is unknown (see docs/trace-format.md).
SCHEMA = pa.schema(
    [
        pa.field("step", pa.int32(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
        pa.field("group_index", pa.int32(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("data_source", pa.string()),
        pa.field("prompt_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("response_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("entropy", pa.list_(pa.float16()), nullable=False),
        pa.field("influence", pa.list_(pa.float32())),
        pa.field("reward", pa.float32(), nullable=False),
        pa.field("correct", pa.bool_()),
        pa.field("accepted", pa.bool_()),
        pa.field("advantage", pa.float32(), nullable=False),
        pa.field("response_length", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("entropy_mean", pa.float32(), nullable=False),
        pa.field("entropy_max", pa.float32(), nullable=False),
        pa.field("influence_sum", pa.float32()),
        pa.field("influence_mean", pa.float32()),
    ]
)

COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

#: Per-token columns: never dictionary-encoded, and the expensive part of a read.
LIST_COLUMNS: tuple[str, ...] = ("prompt_ids", "response_ids", "entropy", "influence")

#: The optional per-token `token_role` column (list<int8>) of agent traces: who wrote each token.
TOKEN_ROLE_COLUMN = "token_role"
ROLE_MODEL, ROLE_TOOL_RESULT, ROLE_TOOL_CALL = 0, 1, 2
ROLE_NAMES = {ROLE_MODEL: "model", ROLE_TOOL_RESULT: "tool result", ROLE_TOOL_CALL: "tool call"}

#: Scalar per-response columns: a step overview reads only these (about a millisecond).
SUMMARY_COLUMNS: tuple[str, ...] = tuple(n for n in COLUMNS if n not in LIST_COLUMNS)

#: Small repetitive string columns where dictionary encoding pays off.
DICTIONARY_COLUMNS: tuple[str, ...] = ("uid", "data_source")


#: summary.json key holding the influence settings a trace was made with (None without influence)
SUMMARY_INFLUENCE_SETTINGS = "influence_settings"


def influence_contrast(summary: Mapping[str, Any]) -> str | None:
    """Which contrast a trace's influence scores used (`include` or `leave_one_out`, the
    `influence.contrast` setting), from its summary.json; None for a trace without influence.
    Traces written before the setting existed used `include`, the only contrast there was."""
    recorded = summary.get(SUMMARY_INFLUENCE_SETTINGS)
    if isinstance(recorded, Mapping) and recorded:
        return str(recorded.get("contrast") or "include")
    return "include" if summary.get("influence") else None


def step_file_name(step: int) -> str:
    """`step_000012.parquet`: zero-padded so that a plain sort is step order."""
    return f"step_{int(step):06d}.parquet"


def schema_metadata(step: int) -> dict[bytes, bytes]:
    """The key-value metadata stored in a step file's footer."""
    return {
        META_FORMAT: FORMAT.encode(),
        META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
        META_STEP: str(int(step)).encode(),
    }


def check_table(table: pa.Table) -> None:
    """Raise ValueError unless `table` starts with the v1 columns, in order and of the right types."""
    names = table.schema.names
    if names[: len(COLUMNS)] != list(COLUMNS):
        missing = [c for c in COLUMNS if c not in names]
        raise ValueError(
            "not a v1 trace step table"
            + (f": missing columns {missing}" if missing else ": columns out of order")
            + " (build it with archer.core.trace.build_step_table)"
        )
    for field in SCHEMA:
        got = table.schema.field(field.name).type
        if got != field.type:
            raise ValueError(f"trace column {field.name!r} has type {got}, expected {field.type}")


# --------------------------------------------------------------------------------------------
# Building a step table
# --------------------------------------------------------------------------------------------


def _lengths(seqs: Sequence[Any], name: str, n: int) -> np.ndarray:
    if len(seqs) != n:
        raise ValueError(f"{name} has {len(seqs)} entries, expected {n} (one per response)")
    return np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    if off[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"a step holds {off[-1]} tokens in one list column; the limit is 2**31 - 1")
    return off.astype(np.int32)


def _concat(seqs: Sequence[Any], dtype: np.dtype, total: int) -> np.ndarray:
    if total == 0:
        return np.zeros(0, dtype=dtype)
    parts = [np.asarray(s).reshape(-1) for s in seqs]
    return np.concatenate(parts, dtype=dtype, casting="unsafe")  # one copy, cast on the fly


def _list_array(
    values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType, mask: np.ndarray | None = None
) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()),
        pa.array(values, type=value_type),
        type=pa.list_(value_type),
        mask=None if mask is None else pa.array(mask, type=pa.bool_()),
    )


def _scalar_column(values: Any, name: str, n: int, dtype: np.dtype, pa_type: pa.DataType) -> pa.Array:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}, expected ({n},) (one per response)")
    if arr.dtype == object:
        raise ValueError(f"{name} must be numeric; got objects (a None in a non-nullable column?)")
    return pa.array(arr.astype(dtype, copy=False), type=pa_type)


def _nullable_bool(values: Any, name: str, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, type=pa.bool_())
    if isinstance(values, np.ndarray) and values.dtype != object:
        if values.shape != (n,):
            raise ValueError(f"{name} has shape {values.shape}, expected ({n},)")
        mask = np.isnan(values) if values.dtype.kind == "f" else None  # NaN = unknown
        return pa.array(np.nan_to_num(values).astype(bool, copy=False), type=pa.bool_(), mask=mask)
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries, expected {n} (one per response)")
    return pa.array([None if v is None else bool(v) for v in values], type=pa.bool_())


def segment_nan_stats(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-segment (sum, count, max) over the non-NaN values; sums in float64, NaN max if none."""
    n = len(offsets) - 1
    lengths = np.diff(offsets).astype(np.int64)
    sums = np.zeros(n)
    counts = np.zeros(n, dtype=np.int64)
    maxes = np.full(n, np.nan, dtype=np.float32)
    nonempty = np.flatnonzero(lengths > 0)
    if len(nonempty) == 0:
        return sums, counts, maxes
    # reduceat over the starts of the non-empty segments only: each one then spans exactly its
    # own segment (empty segments in between hold no elements, trailing ones none either).
    starts = offsets[:-1][nonempty]
    v = values.astype(np.float32, copy=False)  # float16 arithmetic in numpy is emulated and slow
    nan = np.isnan(v)
    if nan.any():
        counts[nonempty] = lengths[nonempty] - np.add.reduceat(nan, starts, dtype=np.int64)
        maxes[nonempty] = np.fmax.reduceat(v, starts)  # fmax skips NaN; all-NaN gives NaN
        v = np.where(nan, np.float32(0), v)
    else:
        counts[nonempty] = lengths[nonempty]
        maxes[nonempty] = np.maximum.reduceat(v, starts)
    sums[nonempty] = np.add.reduceat(v, starts, dtype=np.float64)
    return sums, counts, maxes


def build_step_table(
    step: int,
    *,
    uid: Sequence[str],
    group_index: Sequence[int] | np.ndarray,
    sample_index: Sequence[int] | np.ndarray,
    prompt_ids: Sequence[Sequence[int] | np.ndarray],
    response_ids: Sequence[np.ndarray],
    entropy: Sequence[np.ndarray],
    reward: Sequence[float] | np.ndarray,
    advantage: Sequence[float] | np.ndarray,
    truncated: Sequence[bool] | np.ndarray,
    correct: Sequence[bool | None] | np.ndarray | None = None,
    accepted: Sequence[bool | None] | np.ndarray | None = None,
    influence: Sequence[np.ndarray | None] | None = None,
    data_source: Sequence[str | None] | str | None = None,
    extra: Mapping[str, pa.Array] | None = None,
) -> pa.Table:
    """One rollout step as a schema-v1 table, one row per response (row = position in the step).

    Per-response arguments are sequences of the same length n. `entropy[i]` and `influence[i]`
    must have `len(response_ids[i])` elements; NaN in `influence` marks a token that was not
    captured, and `influence=None` (or a None entry) means "not computed". `data_source` may be
    one string for the whole step. `extra` adds columns after the v1 ones (e.g. `token_role`);
    each must be an Arrow array of length n. Raises ValueError on any mismatch.
    """
    n = len(uid)
    uid_arr = pa.array(list(uid), type=pa.string())
    if uid_arr.null_count:
        raise ValueError("uid must not contain None")

    p_len = _lengths(prompt_ids, "prompt_ids", n)
    r_len = _lengths(response_ids, "response_ids", n)
    e_len = _lengths(entropy, "entropy", n)
    bad = np.flatnonzero(e_len != r_len)
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"step {step}: entropy of response {i} has {e_len[i]} values but the response has "
            f"{r_len[i]} tokens ({len(bad)} response(s) mismatched)"
        )

    p_off, r_off = _offsets(p_len), _offsets(r_len)
    r_total = int(r_off[-1])
    prompt_vals = _concat(prompt_ids, np.dtype(np.int32), int(p_off[-1]))
    resp_vals = _concat(response_ids, np.dtype(np.int32), r_total)
    ent_vals = _concat(entropy, np.dtype(np.float16), r_total)

    # Summaries come from the stored float16 values, so they agree with what a reader recomputes.
    e_sum, e_cnt, e_max = segment_nan_stats(ent_vals, r_off)
    with np.errstate(invalid="ignore", divide="ignore"):
        e_mean = np.where(e_cnt > 0, e_sum / np.maximum(e_cnt, 1), np.nan)

    if influence is None:
        infl_col: pa.Array = pa.nulls(n, type=pa.list_(pa.float32()))
        infl_sum = pa.nulls(n, type=pa.float32())
        infl_mean = pa.nulls(n, type=pa.float32())
    else:
        if len(influence) != n:
            raise ValueError(f"influence has {len(influence)} entries, expected {n} (one per response)")
        present = np.fromiter((x is not None for x in influence), dtype=bool, count=n)
        i_len = np.fromiter((0 if x is None else len(x) for x in influence), dtype=np.int64, count=n)
        bad = np.flatnonzero(present & (i_len != r_len))
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"step {step}: influence of response {i} has {i_len[i]} values but the response "
                f"has {r_len[i]} tokens ({len(bad)} response(s) mismatched)"
            )
        i_off = _offsets(i_len)
        i_vals = _concat([x for x in influence if x is not None], np.dtype(np.float32), int(i_off[-1]))
        # the scores as a v2 file keeps them (float16, one scale per step): the table in memory, its
        # summaries and what a reader gets back are then the same numbers
        from .codec import from_float16, influence_summaries, stored_form  # codec builds on this module

        stored, e = stored_form(i_vals)
        infl_col = _list_array(from_float16(stored, e), i_off, pa.float32(), mask=~present)
        infl_sum, infl_mean = influence_summaries(stored, e, i_off, present)

    if data_source is None:
        ds = pa.nulls(n, type=pa.string())
    elif isinstance(data_source, str):
        ds = pa.array([data_source] * n, type=pa.string())
    else:
        if len(data_source) != n:
            raise ValueError(f"data_source has {len(data_source)} entries, expected {n}")
        ds = pa.array(list(data_source), type=pa.string())

    columns: list[pa.Array] = [
        pa.array(np.full(n, step, dtype=np.int32), type=pa.int32()),
        pa.array(np.arange(n, dtype=np.int32), type=pa.int32()),
        uid_arr,
        _scalar_column(group_index, "group_index", n, np.dtype(np.int32), pa.int32()),
        _scalar_column(sample_index, "sample_index", n, np.dtype(np.int32), pa.int32()),
        ds,
        _list_array(prompt_vals, p_off, pa.int32()),
        _list_array(resp_vals, r_off, pa.int32()),
        _list_array(ent_vals, r_off, pa.float16()),
        infl_col,
        _scalar_column(reward, "reward", n, np.dtype(np.float32), pa.float32()),
        _nullable_bool(correct, "correct", n),
        _nullable_bool(accepted, "accepted", n),
        _scalar_column(advantage, "advantage", n, np.dtype(np.float32), pa.float32()),
        pa.array(r_len.astype(np.int32), type=pa.int32()),
        _scalar_column(truncated, "truncated", n, np.dtype(bool), pa.bool_()),
        pa.array(e_mean.astype(np.float32), type=pa.float32()),
        pa.array(e_max.astype(np.float32), type=pa.float32()),
        infl_sum,
        infl_mean,
    ]
    fields = list(SCHEMA)
    for name, arr in (extra or {}).items():
        if name in COLUMNS:
            raise ValueError(f"extra column {name!r} clashes with a v1 column")
        if not isinstance(arr, (pa.Array, pa.ChunkedArray)):
            raise ValueError(f"extra column {name!r} must be a pyarrow Array, got {type(arr).__name__}")
        if len(arr) != n:
            raise ValueError(f"extra column {name!r} has {len(arr)} entries, expected {n}")
        columns.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema_metadata(step)))


def parse_manifest(
    text: str, default_file: Callable[[int], str], warn: Callable[[str], None], source: str = "manifest.jsonl"
) -> dict[int, dict[str, Any]]:
    """Manifest entries by step, each with a `file` (its own or `default_file(step)`).

    One JSON object per line; an unreadable line is skipped with a warning, except an unterminated
    last line, which a kill mid-append leaves behind and is expected. A step listed twice keeps its
    last entry. Shared by the trace reader and the importer of the original .npz traces."""
    lines = text.split("\n")
    by_step: dict[int, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            step = int(e["step"])
            e["file"] = str(e.get("file") or default_file(step))
        except (ValueError, KeyError, TypeError):
            if i != len(lines) - 1:
                warn(f"{source}: skipped unreadable line {i + 1}")
            continue
        if step in by_step:
            warn(f"{source}: step {step} listed twice; kept the last")
        by_step[step] = e
    return by_step
