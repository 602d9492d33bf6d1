"""How a step table is stored on disk (schema v2/v3), and read back as the logical table.

The logical table (`schema.SCHEMA`: what `build_step_table` returns and every reader gets) has
float32 `influence` and the per-response `influence_sum` / `influence_mean`. On disk, v2 keeps
influence in half the bytes and the summaries not at all, because per-token influence must cost at
most 10 % of an entropy-only trace (issue 19; docs/influence.md, "Trace size"):

- `influence` is float16 of `score / 2^e`, with one exponent `e` per step, in the file's key-value
  metadata (`archer.influence_scale_log2`), chosen so that the step's largest |score| lands in
  (2^14, 2^15]. Dividing by a power of two is exact, so a stored score is the score rounded to
  float16's 11 significant bits: relative error <= 2^-11 for every |score| >= 2^-29 of the step's
  largest (smaller ones keep an absolute error <= 2^-39 of it). A per-response scale would need a
  column, whose fixed cost per row group outweighs the saving on short responses.
- `influence_sum` / `influence_mean` are not stored in a step whose responses average fewer than
  `KEEP_SUMMARIES_MEAN_TOKENS` tokens, where their 8 bytes per response cost as much as the token
  column; the reader derives them (float64 sums over the stored values, `influence_summaries`,
  the function `build_step_table` uses after rounding the scores the same way, so the table in
  memory and the one read back are equal). Longer steps keep them: there they cost under 1/8 B
  per token, and a response list (`TraceReader.step_overview`) then reads no token column.

Schema v3 adds rank codes for long responses (the same steps that keep the summaries), where
even float16 costs +39 % over an entropy-only trace of 4.6 B/token (docs/influence.md):

- `influence` is list<int8>: 0 for a zero score, `CODE_NOT_CAPTURED` for NaN, and ±(k + 1) for a
  score of that sign in magnitude level k of its response. Levels are ranks by |score| among the
  response's non-zero captured tokens: k = 0 is the top token, 1 the next 4 (top 5), then the rest
  of the top 1 %, 10 %, 20 %, 50 % and the bottom half (`RANK_FRACTIONS`). At most 16 distinct
  codes, dictionary-encoded by parquet (4-bit indices, zstd on top, which gets close to the codes'
  entropy: 2.6-2.8 bits per token measured, whatever the distribution of the scores, since the
  level sizes are fixed and only the sign varies; 3.0 on bench/trace_io.py's step, 10 % NaN).
- `influence_levels` (list<float16>, `N_LEVELS` per response: 14 B) holds each level's mean
  |score|, stored like v2's scores (float16 of value / 2^e, e per step in the footer); a reader
  decodes a token to sign × its level's mean. The top token decodes to its float16-stored value
  (exact for scores from `build_step_table`, which already rounds them so), the top 5, 1 %, 10 %,
  20 % and 50 % by |score| stay exactly those sets, and every decoded score lies between the
  smallest and largest |score| of its level. Order inside a level is lost (ties).
- `influence_sum` / `influence_mean` are stored, computed before coding: exact.

A coded step's footer has `archer.influence_storage=codes` (a float16 step's footer is v2's; the
column type tells them apart too, `storage_of`) and its manifest line `"influence_storage"`;
`trace.influence_storage=float16` keeps float16 everywhere. v1 and v2 files read unchanged.
numpy/pyarrow only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from .schema import COLUMNS, SCHEMA

#: Key-value metadata key of a v2 step file: the exponent e of the influence scale 2^e.
META_INFLUENCE_SCALE = b"archer.influence_scale_log2"
#: Per-response columns that v2 does not store: derived from `influence` when read.
DERIVED_COLUMNS: tuple[str, ...] = ("influence_sum", "influence_mean")
#: A v2 step file whose responses average at least this many tokens stores the derived columns.
KEEP_SUMMARIES_MEAN_TOKENS = 64
#: The v1 columns every v2 step file holds, in file order.
STORED_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in DERIVED_COLUMNS)
#: The largest stored |value|, 2^15: float16 has full precision from 2^-14 up to it.
_TOP = 15

#: Key-value metadata key of a coded v3 step file (value `codes`); a float16 step has none: its
#: footer is v2's, byte for byte but the version (the column type tells the two apart too).
META_INFLUENCE_STORAGE = b"archer.influence_storage"
#: `trace.influence_storage` values: `auto` codes long-response steps, `float16` never codes.
INFLUENCE_STORAGES: tuple[str, ...] = ("auto", "float16")
#: Storage of a step, as the footer and the manifest name it.
STORAGE_FLOAT16, STORAGE_CODES = "float16", "codes"
#: The per-response column of a coded step: each level's mean |score| (float16 under the scale).
LEVELS_COLUMN = "influence_levels"
#: Where the rank levels end, as fractions of a response's non-zero captured tokens (rounded up);
#: before them: the top token, then ranks 2-5. The last level is everything below 50 %.
RANK_FRACTIONS: tuple[float, ...] = (0.01, 0.10, 0.20, 0.50)
N_LEVELS = 3 + len(RANK_FRACTIONS)
#: int8 code of a token that was not captured (NaN score).
CODE_NOT_CAPTURED = 127


def scale_exponent(values: np.ndarray) -> int:
    """e with the largest finite |value| in (2^(e+14), 2^(e+15)]; 0 when there is none (or all 0).

    Rounding to float16 keeps the largest scaled value in [2^14, 2^15], so the exponent of rounded
    values is e or e - 1, and e - 1 only doubles the stored values (exact): encoding what was
    decoded gives back the same scores."""
    a = np.abs(np.asarray(values, dtype=np.float32))
    m = float(np.fmax.reduce(a)) if a.size else 0.0  # fmax skips NaN
    if not np.isfinite(m):  # an infinite score (or only NaN): the largest finite one
        m = float(np.max(a, where=np.isfinite(a), initial=0.0))
    if m == 0.0:
        return 0
    frac, exp = np.frexp(m)  # m = frac · 2^exp, frac in [0.5, 1)
    ceil_log2 = int(exp) - 1 if frac == 0.5 else int(exp)
    return ceil_log2 - _TOP


def _times_power_of_two(values: np.ndarray, k: int) -> np.ndarray:
    """values · 2^k, exact (a product with a power of two), as float32; float64 on the way when
    2^k is not a normal float32."""
    if -126 <= k <= 127:
        return values * np.float32(2.0**k)
    return (values.astype(np.float64) * 2.0**k).astype(np.float32)


def to_float16(values: np.ndarray, e: int) -> np.ndarray:
    """The stored form: float16 of values / 2^e (NaN stays NaN)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _times_power_of_two(np.asarray(values, dtype=np.float32), -e).astype(np.float16)


def from_float16(stored: np.ndarray, e: int) -> np.ndarray:
    """The scores as float32: stored · 2^e."""
    with np.errstate(over="ignore", under="ignore"):
        return _times_power_of_two(np.asarray(stored).astype(np.float32), e)


def round_influence(values: np.ndarray) -> np.ndarray:
    """The float32 scores exactly as a reader gets them back from a v2 file."""
    return from_float16(*stored_form(values))


def stored_form(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(float16 values, e): a step's scores as a v2 file stores them."""
    e = scale_exponent(values)
    return to_float16(values, e), e


def influence_summaries(
    stored: np.ndarray, e: int, offsets: np.ndarray, present: np.ndarray
) -> tuple[pa.Array, pa.Array]:
    """(influence_sum, influence_mean) per list row from the stored values (float16 of score /
    2^e): over the non-NaN scores, summed in float64, then scaled by 2^e (exact, so equal to
    summing the decoded scores); null where the row is null (`present` False) or holds no
    captured token. Writer and reader both compute them here, so they agree bit for bit."""
    v = np.asarray(stored).astype(np.float32)  # float16 arithmetic in numpy is emulated and slow
    n = len(offsets) - 1
    lengths = np.diff(offsets).astype(np.int64)
    sums = np.zeros(n)
    counts = np.zeros(n, dtype=np.int64)
    nonempty = np.flatnonzero(lengths > 0)
    if len(nonempty):
        # reduceat over the starts of the non-empty rows only: each then spans exactly its own row
        starts = offsets[:-1][nonempty]
        nan = np.isnan(v)
        counts[nonempty] = lengths[nonempty]
        if nan.any():
            counts[nonempty] -= np.add.reduceat(nan, starts, dtype=np.int64)
            v[nan] = 0.0
        sums[nonempty] = np.add.reduceat(v, starts, dtype=np.float64)
    has = present & (counts > 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = np.ldexp(sums / np.maximum(counts, 1), e)
        sums = np.ldexp(sums, e)
    return (
        pa.array(sums.astype(np.float32), type=pa.float32(), mask=~has),
        pa.array(mean.astype(np.float32), type=pa.float32(), mask=~has),
    )


def _list_parts(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, offsets from 0, valid) of a list column, whatever its chunking or slicing."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    off = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)[off[0] : off[-1]]
    valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return values, (off - off[0]).astype(np.int32), valid


def _list_array(
    values: np.ndarray, offsets: np.ndarray, valid: np.ndarray, value_type: pa.DataType
) -> pa.Array:
    return pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()),
        pa.array(values, type=value_type),
        type=pa.list_(value_type),
        mask=pa.array(~valid, type=pa.bool_()),
    )


def keeps_summaries(table: pa.Table) -> bool:
    """Whether v2 stores the step's `influence_sum` / `influence_mean` (long responses)."""
    n = table.num_rows
    tokens = table.column("response_length").to_numpy().sum(dtype=np.int64) if n else 0
    return n > 0 and tokens >= KEEP_SUMMARIES_MEAN_TOKENS * n


def uses_codes(table: pa.Table, storage: str = "auto") -> bool:
    """Whether a step is stored with rank codes: `storage` auto, long responses
    (`keeps_summaries`) and at least one response with influence."""
    if storage not in INFLUENCE_STORAGES:
        raise ValueError(f"influence storage must be one of {INFLUENCE_STORAGES}, got {storage!r}")
    col = table.column("influence")
    return storage == "auto" and col.null_count < len(col) and keeps_summaries(table)


def encode(table: pa.Table, storage: str = "auto") -> pa.Table:
    """The logical step table as a v3 file stores it. Long responses with `storage` auto
    (`uses_codes`): int8 rank codes in `influence`, the level means in `influence_levels`, the
    summaries stored. Otherwise v2's layout: float16 `influence` scaled by 2^e (e in the schema
    metadata), and `influence_sum` / `influence_mean` only for long responses. Other columns and
    metadata stay; `archer.influence_storage=codes` in the metadata marks a coded step."""
    values, offsets, valid = _list_parts(table.column("influence"))
    meta = dict(table.schema.metadata or {})
    if uses_codes(table, storage):
        codes, levels = code_scores(values, offsets, valid)
        infl = _list_array(codes, offsets, valid, pa.int8())
        e = scale_exponent(levels.reshape(-1))  # the level means as float16 under the step's scale, as in v2
        meta[META_INFLUENCE_SCALE] = str(e).encode()
        meta[META_INFLUENCE_STORAGE] = STORAGE_CODES.encode()
        stored = _levels_array(to_float16(levels, e), valid)
        out = table.append_column(pa.field(LEVELS_COLUMN, stored.type), stored)
    else:
        e = scale_exponent(values)
        infl = _list_array(to_float16(values, e), offsets, valid, pa.float16())
        meta[META_INFLUENCE_SCALE] = str(e).encode()
        out = table if keeps_summaries(table) else table.drop_columns(list(DERIVED_COLUMNS))
    i = out.schema.get_field_index("influence")
    out = out.set_column(i, pa.field("influence", infl.type), infl)
    return out.replace_schema_metadata(meta)


def is_encoded(schema: pa.Schema) -> bool:
    """Whether a file's schema is v2/v3 storage (float16 or coded influence, not float32)."""
    i = schema.get_field_index("influence")
    return i >= 0 and schema.field(i).type in (pa.list_(pa.float16()), pa.list_(pa.int8()))


def is_coded(schema: pa.Schema) -> bool:
    """Whether a step file stores influence as rank codes (v3, long responses)."""
    i = schema.get_field_index("influence")
    return i >= 0 and schema.field(i).type == pa.list_(pa.int8())


def storage_of(schema: pa.Schema) -> str | None:
    """How a step file stores influence: `codes`, `float16` or `float32` (v1); None without it."""
    i = schema.get_field_index("influence")
    if i < 0:
        return None
    t = schema.field(i).type
    if t == pa.list_(pa.int8()):
        return STORAGE_CODES
    return STORAGE_FLOAT16 if t == pa.list_(pa.float16()) else "float32"


# --------------------------------------------------------------------------------------------
# rank codes (v3)
# --------------------------------------------------------------------------------------------


def level_ends(n: int) -> np.ndarray:
    """Rank (exclusive, 0-based) at which each level but the last ends, for n ranked tokens."""
    ends = np.array([1, 5, *(math.ceil(f * n) for f in RANK_FRACTIONS)], dtype=np.int64)
    return np.minimum(np.maximum.accumulate(ends), n)


def code_scores(values: np.ndarray, offsets: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes per token, float32 level means (rows × N_LEVELS), NaN for an empty level):
    the rank coding of a step's scores (list rows `values[offsets[i]:offsets[i + 1]]`)."""
    x = np.asarray(values, dtype=np.float32)
    codes = np.zeros(len(x), dtype=np.int8)
    nan = np.isnan(x)
    codes[nan] = CODE_NOT_CAPTURED
    levels = np.full((len(offsets) - 1, N_LEVELS), np.nan, dtype=np.float32)
    a = np.abs(x)
    for r in np.flatnonzero(valid & (np.diff(offsets) > 0)):
        lo = int(offsets[r])
        seg = a[lo : int(offsets[r + 1])]
        idx = np.flatnonzero(~np.isnan(seg) & (seg != 0))
        if not len(idx):
            continue
        order = idx[np.argsort(-seg[idx], kind="stable")]
        level = np.searchsorted(level_ends(len(order)), np.arange(len(order)), side="right")
        sign = np.where(x[lo + order] > 0, 1, -1)
        codes[lo + order] = (sign * (level + 1)).astype(np.int8)
        count = np.bincount(level, minlength=N_LEVELS)
        total = np.bincount(level, weights=seg[order].astype(np.float64), minlength=N_LEVELS)
        with np.errstate(invalid="ignore"):
            levels[r] = (total / count).astype(np.float32)
        levels[r, 0] = seg[order[0]]  # the top token alone: its own value, not a float64 round trip
    return codes, levels


def decode_codes(codes: np.ndarray, offsets: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The float32 scores a coded step reads back as: sign × the mean |score| of the token's level
    (0 for code 0, NaN for a token not captured). `levels` is rows × N_LEVELS."""
    n = len(offsets) - 1
    # one lookup row per response, indexed by code + N_LEVELS (and the last slot for NaN)
    lut = np.zeros((n, 2 * N_LEVELS + 2), dtype=np.float32)
    lut[:, N_LEVELS + 1 : 2 * N_LEVELS + 1] = levels
    lut[:, N_LEVELS - 1 :: -1] = -levels
    lut[:, -1] = np.nan
    slot = np.asarray(codes).astype(np.int32) + N_LEVELS
    slot[slot == CODE_NOT_CAPTURED + N_LEVELS] = 2 * N_LEVELS + 1
    row = np.repeat(np.arange(n, dtype=np.int32) * lut.shape[1], np.diff(offsets))
    return lut.reshape(-1)[row + slot]


def _levels_array(levels: np.ndarray, valid: np.ndarray) -> pa.Array:
    n = len(levels)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.where(valid, N_LEVELS, 0), out=offsets[1:])
    return _list_array(levels[valid].reshape(-1), offsets, valid, pa.float16())


def _levels_matrix(col: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    values, offsets, valid = _list_parts(col)
    out = np.full((n, N_LEVELS), np.nan, dtype=np.float32)
    rows = np.flatnonzero(valid & (np.diff(offsets) == N_LEVELS))
    if len(rows):
        out[rows] = values[offsets[rows][:, None] + np.arange(N_LEVELS)]
    return out


def derived_here(schema: pa.Schema) -> list[str]:
    """The logical columns a step file does not store (computed from `influence` when read)."""
    if not is_encoded(schema):
        return []
    return [c for c in DERIVED_COLUMNS if c not in schema.names]


def columns_to_read(schema: pa.Schema, wanted: Sequence[str] | None) -> list[str] | None:
    """The stored columns that give `wanted` (None: all): a derived one needs `influence`, and
    coded `influence` its `influence_levels`."""
    if wanted is None:
        return None
    derived = derived_here(schema)
    out = [c for c in wanted if c not in derived]
    if "influence" not in out and any(c in derived for c in wanted):
        out.append("influence")
    if "influence" in out and is_coded(schema) and LEVELS_COLUMN not in out:
        out.append(LEVELS_COLUMN)
    return out


def decode(table: pa.Table, metadata: Mapping[bytes, bytes] | None, wanted: Sequence[str] | None) -> pa.Table:
    """What `columns_to_read` read, as the logical table: `influence` as float32 scores and the
    derived summaries computed from them, in the order of `wanted` (None: the v1 columns, then any
    extra ones as stored). A v1 table (float32 influence) is only narrowed to `wanted`."""
    if "influence" not in table.column_names or not is_encoded(table.schema):
        return table if wanted is None else table.select(list(wanted))
    values, offsets, valid = _list_parts(table.column("influence"))
    cols: dict[str, pa.Array | pa.ChunkedArray] = {n: table.column(n) for n in table.column_names}
    e = int((metadata or {}).get(META_INFLUENCE_SCALE, b"0"))
    if is_coded(table.schema):  # v3 rank codes: the summaries are stored
        if wanted is None or "influence" in wanted:
            levels = from_float16(_levels_matrix(table.column(LEVELS_COLUMN), len(offsets) - 1), e)
            scores = decode_codes(values, offsets, levels)
            cols["influence"] = _list_array(scores, offsets, valid, pa.float32())
    else:
        if wanted is None or "influence" in wanted:
            cols["influence"] = _list_array(from_float16(values, e), offsets, valid, pa.float32())
        missing = [c for c in DERIVED_COLUMNS if c not in cols]
        if missing and (wanted is None or any(c in missing for c in wanted)):
            cols["influence_sum"], cols["influence_mean"] = influence_summaries(values, e, offsets, valid)
    if wanted is None:
        names = list(COLUMNS) + [c for c in table.column_names if c not in COLUMNS and c != LEVELS_COLUMN]
    else:
        names = list(wanted)
    logical = set(SCHEMA.names)
    fields = [
        pa.field(n, cols[n].type, nullable=SCHEMA.field(n).nullable)
        if n in logical
        else table.schema.field(n)
        for n in names
    ]
    meta = {
        k: v
        for k, v in (table.schema.metadata or {}).items()
        if k not in (META_INFLUENCE_SCALE, META_INFLUENCE_STORAGE)
    }
    return pa.Table.from_arrays([cols[n] for n in names], schema=pa.schema(fields, metadata=meta))


def describe_columns(schema: pa.Schema) -> list[dict[str, str]]:
    """A step file's columns as a reader gets them: name, type, and how the file stores it."""
    if not is_encoded(schema):
        return [{"name": f.name, "type": str(f.type), "stored": str(f.type)} for f in schema]
    how = {
        "influence": f"{schema.field('influence').type} of score / 2^e, e per step in the file metadata",
        **{c: "not stored: computed from influence when read" for c in derived_here(schema)},
    }
    if is_coded(schema):
        how["influence"] = (
            f"{schema.field('influence').type} rank codes (sign, level by |score|), "
            f"decoded with the level means in {LEVELS_COLUMN}"
        )
    stored = schema.field("influence").type
    read_as = {"influence": pa.list_(stored.value_field.with_type(pa.float32()))}
    read_as.update({c: SCHEMA.field(c).type for c in DERIVED_COLUMNS})
    names = list(COLUMNS) + [n for n in schema.names if n not in COLUMNS and n != LEVELS_COLUMN]
    out = []
    for n in names:
        t = str(read_as.get(n) or schema.field(n).type)
        out.append({"name": n, "type": t, "stored": how.get(n, t)})
    return out
