"""Turn a local copy of DAPO-Math-17k into clean, deduplicated train/val files in verl's layout.

Two inputs are accepted, told apart by their columns:

- processed (`open-r1/DAPO-Math-17k-Processed`): `prompt` is a string that still carries DAPO's
  instruction wrapper, plus `solution`, `source_prompt`, `reward_model`, ...
- raw (`BytedTsinghua-SIA/DAPO-Math-17k`): `prompt` is a chat list; ~17.9k problems each repeated
  ~100 times (1.79M rows).

Because the raw file is large, it is streamed in record batches and reduced with pyarrow group-bys
(one row per (problem, answer) pair per batch), never materialised as Python objects. A jsonl
file is streamed by pyarrow too, unless its rows disagree on types; then it is read line by line
so that each bad row can be counted rather than failing the whole file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.errors import DataError, UsageError

LANGUAGES = ("all", "en", "cn")
BATCH_ROWS = 65_536
DEFAULT_SOURCE = "math_dapo"
DEFAULT_ABILITY = "MATH"

# Bad-row kinds, in the order they are checked (a row is counted once, under the first that applies).
BAD_KINDS = (
    "invalid_json",
    "missing_prompt",
    "wrong_type_prompt",
    "empty_prompt",
    "missing_answer",
    "wrong_type_answer",
    "empty_answer",
    "conflicting_answer",
)

# DAPO's instruction wrapper, tolerant of whitespace, case and quote variants (RE2 syntax).
WRAPPER_PREFIX = (
    r"(?i)^\s*Solve\s+the\s+following\s+math\s+problem\s+step\s+by\s+step\.?\s*The\s+last\s+line\s+of\s+"
    r"your\s+response\s+should\s+be\s+of\s+the\s+form\s+Answer\s*:\s*\$Answer\s*\(without\s+quotes\)\s*"
    r"where\s+\$Answer\s+is\s+the\s+answer\s+to\s+the\s+problem\.?\s*"
)
WRAPPER_SUFFIX = (
    r"(?i)\s*Remember\s+to\s+put\s+your\s+answer\s+on\s+its\s+own\s+line\s+after\s*"
    r"[\"'“”]?\s*Answer\s*:?\s*[\"'“”]?\s*\.?\s*$"
)

# What `extra_info` holds besides index/split: the input's own extra_info.index (a string: the raw
# dataset uses UUIDs), the row number in the input file, and "en"/"cn".
EXTRA_FIELDS = [("original_index", "string"), ("source_row", "int64"), ("language", "string")]

Progress = Callable[[str, int, "int | None"], None]


@dataclass
class PrepareReport:
    """What `prepare_dapo_math` read, dropped and wrote."""

    input_path: Path
    input_format: str  # "processed" or "raw"
    rows_read: int = 0
    bad: dict[str, int] = field(default_factory=dict)  # kind -> rows
    duplicates_removed: int = 0  # repeats of a problem with the same answer
    conflicting_prompts: int = 0  # problems dropped because their copies disagree on the answer
    unique_prompts: int = 0  # distinct usable problems before the language filter
    language_filtered: int = 0
    train_rows: int = 0
    val_rows: int = 0
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())


# -- reading: every source becomes batches of canonical columns ---------------------------------
# row (int64, position in the input), problem (string), answer (string), orig_index (string: the
# input's extra_info.index, which is a UUID string in the raw dataset), data_source, ability,
# bad (string kind, null for a usable row).


def _detect_format(columns: set[str], path: Path) -> str:
    if "source_prompt" in columns or "solution" in columns:
        return "processed"
    if "prompt" in columns and "reward_model" in columns:
        return "raw"
    shown = ", ".join(sorted(columns)) or "(none)"
    raise DataError(
        f"{path} does not look like DAPO-Math: columns are {shown}",
        hint="expected open-r1/DAPO-Math-17k-Processed (prompt, solution, reward_model, ...) "
        "or BytedTsinghua-SIA/DAPO-Math-17k (prompt as chat messages, reward_model, extra_info)",
    )


def _canonical_batch(
    n: int, row0: int, problem: Any, answer: Any, orig: Any, source: Any, ability: Any, bad: Any
) -> Any:
    import numpy as np
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [pa.array(np.arange(row0, row0 + n, dtype=np.int64)), problem, answer, orig, source, ability, bad],
        names=["row", "problem", "answer", "orig_index", "data_source", "ability", "bad"],
    )


def _string_or_default(col: Any, default: str, n: int) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    if col is not None and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return pc.fill_null(col.cast(pa.string()), default)
    return pa.array([default] * n, pa.string())


def _as_text(col: Any) -> tuple[Any, Any]:
    """(text as string or None, mask of rows whose value has a type we cannot use)."""
    import numpy as np
    import pyarrow as pa

    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.cast(pa.string()), np.zeros(len(col), bool)
    if pa.types.is_integer(t):
        return col.cast(pa.string()), np.zeros(len(col), bool)
    if pa.types.is_null(t):
        return pa.nulls(len(col), pa.string()), np.zeros(len(col), bool)
    return pa.nulls(len(col), pa.string()), col.is_valid().to_numpy(zero_copy_only=False)


def _field(col: Any, name: str) -> Any:
    """A struct column's field (None if `col` is not a struct with that field)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if col is None or not pa.types.is_struct(col.type) or col.type.get_field_index(name) < 0:
        return None
    return pc.struct_field(col, name)


def _chat_user_text(col: Any) -> tuple[Any, Any, Any]:
    """(text of the last user message, wrong-type mask, no-user-message mask) for a chat column."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(col)
    item = col.type.value_type
    if not pa.types.is_struct(item) or item.get_field_index("content") < 0:
        return pa.nulls(n, pa.string()), col.is_valid().to_numpy(zero_copy_only=False), np.zeros(n, bool)
    flat = pc.list_flatten(col)
    parents = pc.list_parent_indices(col).to_numpy()
    content, wrong = _as_text(pc.struct_field(flat, "content"))
    if item.get_field_index("role") >= 0:
        role = _as_text(pc.struct_field(flat, "role"))[0]
        is_user = pc.fill_null(pc.equal(role, "user"), False).to_numpy(zero_copy_only=False)
    else:
        is_user = np.ones(len(flat), bool)
    wrong_rows = np.zeros(n, bool)
    np.logical_or.at(wrong_rows, parents[wrong], True)
    keep = np.flatnonzero(is_user)
    kept_parents = parents[keep]
    last = np.ones(len(keep), bool)
    last[:-1] = kept_parents[1:] != kept_parents[:-1]
    take = np.full(n, -1, np.int64)
    take[kept_parents[last]] = keep[last]
    has_user = take >= 0
    # take() with a null index gives null: rows without a user message get no text
    text = pc.take(content, pa.array(take, mask=~has_user)) if len(flat) else pa.nulls(n, pa.string())
    no_user = ~has_user & col.is_valid().to_numpy(zero_copy_only=False)
    return text, wrong_rows, no_user


def _classify(n: int, checks: list[tuple[str, Any]]) -> Any:
    """A string array naming the first failed check per row (null where all pass)."""
    import numpy as np
    import pyarrow as pa

    kinds = np.full(n, None, dtype=object)
    for kind, mask in checks:
        kinds[np.asarray(mask, bool) & (kinds == None)] = kind  # noqa: E711 - numpy elementwise
    return pa.array(kinds, pa.string())


def _canon_arrow(batch: Any, fmt: str, row0: int) -> Any:
    """Canonical columns for one batch read by pyarrow (parquet, or jsonl that pyarrow could type)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    names = set(batch.schema.names)
    col = batch.column("prompt") if "prompt" in names else pa.nulls(n, pa.string())
    no_user = np.zeros(n, bool)
    if fmt == "raw" and (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        problem, p_wrong, no_user = _chat_user_text(col)
    else:
        problem, p_wrong = _as_text(col)
    p_missing = ~col.is_valid().to_numpy(zero_copy_only=False) | (
        problem.is_null().to_numpy(zero_copy_only=False) & ~p_wrong & ~no_user
    )
    p_empty = no_user | pc.fill_null(pc.equal(pc.utf8_trim_whitespace(problem), ""), False).to_numpy(
        zero_copy_only=False
    )

    rm = batch.column("reward_model") if "reward_model" in names else None
    gt = _field(rm, "ground_truth")
    a_wrong = np.zeros(n, bool)
    if rm is not None and gt is None:  # reward_model is not a struct with ground_truth
        if not pa.types.is_null(rm.type) and not pa.types.is_struct(rm.type):
            a_wrong = rm.is_valid().to_numpy(zero_copy_only=False)
        gt = pa.nulls(n, pa.string())
    if gt is None:
        gt = pa.nulls(n, pa.string())
    answer, gt_wrong = _as_text(gt)
    a_wrong = a_wrong | gt_wrong
    if fmt == "processed" and "solution" in names:  # reward_model missing on a row: use solution
        sol, sol_wrong = _as_text(batch.column("solution"))
        use_sol = (~gt.is_valid().to_numpy(zero_copy_only=False)) & ~a_wrong
        answer = pc.if_else(pa.array(use_sol), sol, answer)
        a_wrong = a_wrong | (use_sol & sol_wrong)
    answer = pc.utf8_trim_whitespace(answer)
    a_missing = answer.is_null().to_numpy(zero_copy_only=False) & ~a_wrong
    a_empty = pc.fill_null(pc.equal(answer, ""), False).to_numpy(zero_copy_only=False)

    idx = _field(batch.column("extra_info") if "extra_info" in names else None, "index")
    orig = _as_text(idx)[0] if idx is not None else pa.nulls(n, pa.string())
    bad = _classify(
        n,
        [
            ("missing_prompt", p_missing),
            ("wrong_type_prompt", p_wrong),
            ("empty_prompt", p_empty),
            ("missing_answer", a_missing),
            ("wrong_type_answer", a_wrong),
            ("empty_answer", a_empty),
        ],
    )
    source = _string_or_default(
        batch.column("data_source") if "data_source" in names else None, DEFAULT_SOURCE, n
    )
    ability = _string_or_default(batch.column("ability") if "ability" in names else None, DEFAULT_ABILITY, n)
    return _canonical_batch(n, row0, problem, answer, orig, source, ability, bad)


def _canon_python_row(row: Any, fmt: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(problem, answer, original index, bad kind) for one JSON row; mirrors `_canon_arrow`."""
    if not isinstance(row, dict):
        return None, None, None, "invalid_json"
    prompt = row.get("prompt")
    problem: str | None = None
    kind = None
    if prompt is None:
        kind = "missing_prompt"
    elif isinstance(prompt, str):
        problem = prompt
    elif (
        fmt == "processed" and isinstance(prompt, int) and not isinstance(prompt, bool)
    ):  # as pyarrow reads it
        problem = str(prompt)
    elif fmt == "raw" and isinstance(prompt, list):
        if not all(isinstance(m, dict) for m in prompt) or any(
            m.get("content") is not None and not isinstance(m.get("content"), str) for m in prompt
        ):
            kind = "wrong_type_prompt"
        else:
            has_roles = any("role" in m for m in prompt)
            users = [m for m in prompt if m.get("role") == "user"] if has_roles else prompt
            if not users:
                kind = "empty_prompt"
            elif users[-1].get("content") is None:
                kind = "missing_prompt"
            else:
                problem = users[-1]["content"]
    else:
        kind = "wrong_type_prompt"
    if kind is None and not problem.strip():  # type: ignore[union-attr]
        kind = "empty_prompt"

    rm = row.get("reward_model")
    answer: Any = None
    a_kind = None
    if rm is None:
        answer = row.get("solution") if fmt == "processed" else None
    elif isinstance(rm, dict):
        answer = rm.get("ground_truth")
        if answer is None and fmt == "processed":
            answer = row.get("solution")
    else:
        a_kind = "wrong_type_answer"
    if a_kind is None:
        if answer is None:
            a_kind = "missing_answer"
        elif isinstance(answer, bool) or not isinstance(answer, (str, int)):
            a_kind = "wrong_type_answer"
        elif not str(answer).strip():
            a_kind = "empty_answer"
    info = row.get("extra_info")
    orig = info.get("index") if isinstance(info, dict) else None
    orig = str(orig) if isinstance(orig, (str, int)) and not isinstance(orig, bool) else None
    text = str(answer).strip() if a_kind is None else None
    return problem, text, orig, kind or a_kind


def _canon_python(rows: list[Any], fmt: str, row0: int) -> Any:
    import pyarrow as pa

    n = len(rows)
    problems, answers, origs, kinds, sources, abilities = [], [], [], [], [], []
    for row in rows:
        problem, answer, orig, kind = _canon_python_row(row, fmt)
        problems.append(problem if kind is None else None)
        answers.append(answer if kind is None else None)
        origs.append(orig)
        kinds.append(kind)
        src = row.get("data_source") if isinstance(row, dict) else None
        abl = row.get("ability") if isinstance(row, dict) else None
        sources.append(src if isinstance(src, str) else DEFAULT_SOURCE)
        abilities.append(abl if isinstance(abl, str) else DEFAULT_ABILITY)
    return _canonical_batch(
        n,
        row0,
        pa.array(problems, pa.string()),
        pa.array(answers, pa.string()),
        pa.array(origs, pa.string()),
        pa.array(sources, pa.string()),
        pa.array(abilities, pa.string()),
        pa.array(kinds, pa.string()),
    )


def _read_error(path: Path, e: Exception) -> DataError:
    return DataError(
        f"cannot read {path}: {e}", hint="check that the file is a complete parquet or jsonl file"
    )


def _parquet_batches(path: Path, progress: Progress | None) -> tuple[str, Iterator[Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise _read_error(path, e) from e
    names = set(f.schema_arrow.names)
    fmt = _detect_format(names, path)
    wanted = [
        c
        for c in ("prompt", "reward_model", "solution", "extra_info", "data_source", "ability")
        if c in names
    ]
    total = f.metadata.num_rows

    def batches() -> Iterator[Any]:
        row0 = 0
        try:
            for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                yield _canon_arrow(batch, fmt, row0)
                row0 += batch.num_rows
                if progress:
                    progress("reading", row0, total)
        except (pa.ArrowException, OSError) as e:
            raise _read_error(path, e) from e

    return fmt, batches()


def _jsonl_arrow_batches(path: Path, progress: Progress | None) -> tuple[str, Iterator[Any]]:
    """Stream a jsonl file through pyarrow; raises pyarrow.ArrowInvalid if rows disagree on types."""
    import pyarrow.json as pj

    options = pj.ReadOptions(block_size=64 << 20)  # must exceed the longest line
    if hasattr(pj, "open_json"):  # streaming reader (pyarrow >= 18)
        reader = pj.open_json(path, read_options=options)
    else:  # pragma: no cover - older pyarrow reads the whole file
        reader = pj.read_json(path, read_options=options).to_reader()
    fmt = _detect_format(set(reader.schema.names), path)

    def batches() -> Iterator[Any]:
        row0 = 0
        for batch in reader:
            # pyarrow's JSON reader does not check UTF-8: an invalid byte would reach the parquet
            # and fail in training; this raises ArrowInvalid, and the line-by-line reader counts it.
            batch.validate(full=True)
            yield _canon_arrow(batch, fmt, row0)
            row0 += batch.num_rows
            if progress:
                progress("reading", row0, None)

    return fmt, batches()


_INVALID = object()  # stands for a jsonl line that is not JSON


def _jsonl_python_batches(path: Path, progress: Progress | None) -> tuple[str, Iterator[Any]]:
    """Line by line: each unparsable line or mistyped value becomes one counted bad row."""
    fmt_holder: list[str] = []

    def lines() -> Iterator[Any]:
        try:
            with path.open("rb") as f:
                for raw in f:
                    if raw.strip():
                        try:  # invalid UTF-8 is not JSON text either (RFC 8259): one bad row
                            yield json.loads(raw.decode("utf-8"))
                        except (json.JSONDecodeError, UnicodeDecodeError):
                            yield _INVALID
        except OSError as e:
            raise _read_error(path, e) from e

    it = lines()
    head = []
    for row in it:
        head.append(row)
        if len(head) >= 1000:
            break
    keys = set().union(*(r.keys() for r in head if isinstance(r, dict)))
    fmt_holder.append(_detect_format(keys, path))

    def batches() -> Iterator[Any]:
        buf = head
        row0 = 0
        for row in it:
            buf.append(row)
            if len(buf) >= BATCH_ROWS:
                yield _canon_python(buf, fmt_holder[0], row0)
                row0 += len(buf)
                buf = []
                if progress:
                    progress("reading", row0, None)
        if buf:
            yield _canon_python(buf, fmt_holder[0], row0)
            if progress:
                progress("reading", row0 + len(buf), None)

    return fmt_holder[0], batches()


# -- reducing: dedupe by problem text, detect conflicting answers ------------------------------------
class _Reducer:
    """Counts bad rows and keeps one row per (problem, answer) pair, batch by batch.

    Each batch is first collapsed on the raw (problem, answer) pair, so the wrapper regexes run
    once per distinct problem, not once per copy; partial results are merged every few batches so
    memory stays near one copy of the distinct problems.
    """

    MERGE_EVERY = 8

    def __init__(self, strip_instruction: bool):
        self.strip_instruction = strip_instruction
        self.rows = 0
        self.bad: Counter[str] = Counter()
        self.parts: list[Any] = []

    def add(self, batch: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.rows += batch.num_rows
        table = pa.Table.from_batches([batch])
        for kind, count in zip(*_value_counts(table["bad"])):
            self.bad[kind] += count
        table = table.filter(pc.is_null(table["bad"]))
        table = table.append_column("count", pa.array([1] * table.num_rows, pa.int64()))
        pairs = _first_per_pair(table, "problem")
        key = pc.utf8_trim_whitespace(
            pc.replace_substring_regex(
                pc.replace_substring_regex(pairs["problem"], WRAPPER_PREFIX, ""), WRAPPER_SUFFIX, ""
            )
        )
        # A prompt that is nothing but the wrapper has no problem in it.
        only_wrapper = pc.equal(key, "")
        self.bad["empty_prompt"] += pc.sum(pc.filter(pairs["count"], only_wrapper)).as_py() or 0
        out = key if self.strip_instruction else pc.utf8_trim_whitespace(pairs["problem"])
        pairs = pairs.append_column("key", key).append_column("out", out).filter(pc.invert(only_wrapper))
        self.parts.append(_first_per_pair(pairs.drop_columns(["problem"]), "key"))
        if len(self.parts) >= self.MERGE_EVERY:
            self.parts = [_first_per_pair(pa.concat_tables(self.parts), "key")]

    def result(self) -> tuple[Any, int, int, int]:
        """(usable problems in first-seen order, duplicates, conflicting problems, conflicting rows)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self.parts:
            return None, 0, 0, 0
        pairs = _first_per_pair(pa.concat_tables(self.parts), "key")
        per_key = pairs.group_by("key", use_threads=False).aggregate([("answer", "count"), ("count", "sum")])
        conflicting = per_key.filter(pc.greater(per_key["answer_count"], 1))
        conflict_rows = pc.sum(conflicting["count_sum"]).as_py() or 0
        good = pairs.filter(pc.invert(pc.is_in(pairs["key"], value_set=conflicting["key"])))
        duplicates = (pc.sum(good["count"]).as_py() or 0) - good.num_rows
        return good.sort_by("row"), duplicates, conflicting.num_rows, conflict_rows


def _value_counts(arr: Any) -> tuple[list[str], list[int]]:
    import pyarrow.compute as pc

    vc = pc.value_counts(arr.drop_null())
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()


def _first_per_pair(table: Any, text_col: str) -> Any:
    """One row per (text_col, answer): the earliest row's values, and the summed `count`."""
    keep = [c for c in table.column_names if c not in (text_col, "answer", "count")]
    grouped = table.group_by([text_col, "answer"], use_threads=False).aggregate(
        [(c, "first") for c in keep] + [("count", "sum")]
    )
    renames = {f"{c}_first": c for c in keep} | {"count_sum": "count"}
    return grouped.rename_columns([renames.get(n, n) for n in grouped.column_names])


# -- writing -----------------------------------------------------------------------------------------
def _output_table(rows: Any, split: str) -> Any:
    import numpy as np
    import pyarrow as pa

    from archer.core.data import verl_schema

    n = rows.num_rows

    def col(name: str) -> Any:
        return rows[name].combine_chunks()

    def const(value: str) -> Any:
        return pa.array([value] * n, pa.string())

    messages = pa.StructArray.from_arrays([const("user"), col("out")], names=["role", "content"])
    prompt = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), messages)
    reward = pa.StructArray.from_arrays([col("answer"), const("rule")], names=["ground_truth", "style"])
    extra = pa.StructArray.from_arrays(
        [
            pa.array(np.arange(n, dtype=np.int64)),
            const(split),
            col("orig_index"),
            col("row"),
            col("language"),
        ],
        names=["index", "split", "original_index", "source_row", "language"],
    )
    schema = verl_schema(EXTRA_FIELDS)
    return pa.Table.from_arrays([prompt, col("data_source"), col("ability"), reward, extra], schema=schema)


def prepare_dapo_math(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_size: int = 512,
    seed: int = 0,
    language: str = "all",
    strip_instruction: bool = False,
    strict: bool = False,
    progress: Progress | None = None,
) -> PrepareReport:
    """Read, clean, deduplicate and split DAPO-Math into `out_dir/train.parquet` and `val.parquet`.

    Bad rows (see `BAD_KINDS`) are dropped and counted; `strict=True` refuses to write anything if
    there is one. Problems whose copies disagree on the answer are dropped entirely. `progress`,
    if given, is called as `progress(stage, done, total_or_None)`.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from archer.core.data import TRAIN_FILE, VAL_FILE, prepare_out_dir, write_tables_atomic
    from archer.core.data.loading import check_input, is_parquet

    if language not in LANGUAGES:
        raise UsageError(f"unknown language {language!r}", hint=f"use one of: {', '.join(LANGUAGES)}")
    if val_size < 0:
        raise UsageError(f"val_size must be >= 0 (got {val_size})", hint="use 0 for no validation split")
    path = check_input(input_path)

    def run(source: tuple[str, Iterator[Any]]) -> tuple[str, _Reducer]:
        fmt, batches = source
        reducer = _Reducer(strip_instruction)
        for batch in batches:
            reducer.add(batch)
        return fmt, reducer

    try:
        if is_parquet(path):
            fmt, reducer = run(_parquet_batches(path, progress))
        else:
            try:
                fmt, reducer = run(_jsonl_arrow_batches(path, progress))
            except pa.ArrowException:  # rows disagree on types (or are not JSON): count them one by one
                fmt, reducer = run(_jsonl_python_batches(path, progress))
    except OSError as e:
        raise _read_error(path, e) from e

    if progress:
        progress("deduplicating", reducer.rows, reducer.rows)
    report = PrepareReport(input_path=path, input_format=fmt, rows_read=reducer.rows)
    good, report.duplicates_removed, report.conflicting_prompts, conflict_rows = reducer.result()
    bad = dict(reducer.bad)
    if conflict_rows:
        bad["conflicting_answer"] = conflict_rows
    report.bad = {k: bad[k] for k in BAD_KINDS if bad.get(k)}
    if strict and report.bad:
        counts = ", ".join(f"{k}={v}" for k, v in report.bad.items())
        raise DataError(
            f"{report.bad_rows} bad rows in {path} ({counts}); nothing was written",
            hint="fix those rows, or run without --strict to drop them",
        )
    if good is None or good.num_rows == 0:
        raise DataError(
            f"no usable problems in {path} ({report.rows_read} rows read)",
            hint="check the file is DAPO-Math with prompts and reward_model.ground_truth",
        )
    report.unique_prompts = good.num_rows

    has_han = pc.match_substring_regex(good["key"], r"\p{Han}")
    good = good.append_column("language", pc.if_else(has_han, pa.scalar("cn"), pa.scalar("en")))
    if language != "all":
        good = good.filter(pc.equal(good["language"], language))
    report.language_filtered = report.unique_prompts - good.num_rows
    kept = good.num_rows
    if kept == 0:
        raise DataError(
            f"no {language} problems in {path}", hint="use --language all, or check the input file"
        )
    if val_size >= kept:
        raise DataError(
            f"--val-size {val_size} leaves no training problems ({kept} usable)",
            hint=f"use a --val-size below {kept}",
        )

    perm = np.random.default_rng(seed).permutation(kept)
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    out = prepare_out_dir(out_dir)
    report.paths = {"train": out / TRAIN_FILE, "val": out / VAL_FILE}
    if progress:
        progress("writing", 0, 2)
    write_tables_atomic(
        {
            report.paths["train"]: _output_table(good.take(pa.array(train_idx)), "train"),
            report.paths["val"]: _output_table(good.take(pa.array(val_idx)), "val"),
        }
    )
    if progress:
        progress("writing", 2, 2)
    report.train_rows, report.val_rows = len(train_idx), len(val_idx)
    return report
