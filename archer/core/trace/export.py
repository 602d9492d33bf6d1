"""Trace rows as export records (one per response or per token), written as CSV or JSON lines.

One source for `archer trace export` and the viewer's `e`/`E` exports: the column sets, how a value
is cleaned (NaN -> empty cell / null, numpy scalars -> Python), and the writers. A file appears
under its name only once complete (temp file + rename), so an interrupted export never leaves half
a CSV that looks whole.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .reader import TraceReader, list_values

FORMATS = ("csv", "jsonl")

RESPONSE_EXPORT_COLUMNS = (
    "step",
    "row",
    "uid",
    "group_index",
    "sample_index",
    "data_source",
    "reward",
    "correct",
    "accepted",
    "advantage",
    "response_length",
    "truncated",
    "entropy_mean",
    "entropy_max",
    "influence_sum",
    "influence_mean",
)
#: whole decoded texts of a response export (empty without a tokenizer)
RESPONSE_TEXT_COLUMNS = ("prompt_text", "response_text")
TOKEN_EXPORT_COLUMNS = ("step", "row", "uid", "position", "token_id", "text", "entropy", "influence")


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------


def clean(v: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, so CSV shows an empty cell and JSON null."""
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) else float(f"{f:.7g}")
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def response_record(values: Mapping[str, Any]) -> dict[str, Any]:
    """One response's summary values (any mapping holding them) as an export record."""
    return {c: clean(values.get(c)) for c in RESPONSE_EXPORT_COLUMNS}


def step_response_records(reader: TraceReader, step: int, decoder: Any = None) -> Iterator[dict[str, Any]]:
    """Every response of a step as records (RESPONSE_EXPORT_COLUMNS), from its summary columns.

    With `decoder` (a text `decode.Decoder`) the records also hold RESPONSE_TEXT_COLUMNS: the prompt
    and the response decoded whole (special tokens kept, as the model saw them). A group's prompt
    is decoded once.
    """
    overview = reader.step_overview(step).to_pylist()
    if decoder is None:
        for values in overview:
            yield response_record(values)
        return
    t = reader.read_step(step, columns=["prompt_ids", "response_ids"])
    p_ids, p_off = list_values(t.column("prompt_ids"))
    r_ids, r_off = list_values(t.column("response_ids"))
    prompts: dict[bytes, str] = {}
    for r, values in enumerate(overview):
        prompt = p_ids[p_off[r] : p_off[r + 1]]
        key = prompt.tobytes()
        if key not in prompts:
            prompts[key] = decoder.decode(prompt.tolist())
        rec = response_record(values)
        rec["prompt_text"] = prompts[key]
        rec["response_text"] = decoder.decode(r_ids[r_off[r] : r_off[r + 1]].tolist())
        yield rec


def token_records(
    step: int,
    row: int,
    uid: Any,
    ids: np.ndarray,
    entropy: np.ndarray,
    influence: np.ndarray | None,
    texts: Sequence[str] | None = None,
    positions: Sequence[int] | np.ndarray | None = None,
) -> Iterator[dict[str, Any]]:
    """One response's tokens as records (TOKEN_EXPORT_COLUMNS), in `positions` order (default: all);
    `text` is None without `texts`, `influence` None when it was not computed."""
    for p in range(len(ids)) if positions is None else positions:
        p = int(p)
        yield {
            "step": step,
            "row": row,
            "uid": uid,
            "position": p,
            "token_id": int(ids[p]),
            "text": None if texts is None else texts[p],
            "entropy": clean(entropy[p]),
            "influence": None if influence is None else clean(influence[p]),
        }


def step_token_records(reader: TraceReader, step: int, decoder: Any = None) -> Iterator[dict[str, Any]]:
    """Every token of a step as records (TOKEN_EXPORT_COLUMNS), reading the token columns once.

    `decoder` (a `decode.Decoder`) fills `text`; without one it is None.
    """
    t = reader.read_step(step, columns=["uid", "response_ids", "entropy", "influence"])
    ids, i_off = list_values(t.column("response_ids"))
    ent, e_off = list_values(t.column("entropy"))
    inf_col = t.column("influence")
    inf, f_off = list_values(inf_col)
    inf_null = inf_col.is_null().to_numpy(zero_copy_only=False) if t.num_rows else np.zeros(0, bool)
    uids = t.column("uid").to_pylist()
    for r in range(t.num_rows):
        rid = ids[i_off[r] : i_off[r + 1]]
        re_ = ent[e_off[r] : e_off[r + 1]].astype(np.float32)
        ri = None if inf_null[r] else inf[f_off[r] : f_off[r + 1]].astype(np.float32)
        texts = decoder.token_texts(rid) if decoder is not None else None
        yield from token_records(step, r, uids[r], rid, re_, ri, texts)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


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
