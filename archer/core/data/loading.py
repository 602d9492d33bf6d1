"""Read training prompts and their ground truths from parquet or jsonl files.

The engines only need (prompt, answer) pairs, but users point `data.train_files` at all sorts of
files, so the column names are configurable (`answer_key` may be dotted to reach into a struct,
as in verl's `reward_model.ground_truth`) and every failure names the file and what it holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.errors import DataError

PARQUET_MAGIC = b"PAR1"


@dataclass
class PromptRecord:
    """One problem: a plain string or chat messages, and the ground truth as a string."""

    prompt: str | list[dict]
    answer: str
    data_source: str
    index: int


def is_parquet(path: Path) -> bool:
    """By suffix, else by the file's magic bytes (so `data.bin` written by pyarrow still reads)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return True
    if suffix in (".jsonl", ".json", ".ndjson"):
        return False
    with path.open("rb") as f:
        return f.read(4) == PARQUET_MAGIC


def check_input(path: str | Path) -> Path:
    """The path, or a DataError if it is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"input file not found: {p}",
            hint="check the path (relative paths start from the current directory)",
        )
    if not p.is_file():
        raise DataError(f"not a file: {p}", hint="pass a .parquet or .jsonl file, not a directory")
    return p


def _dig(value: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _split_key(key: str, columns: list[str]) -> tuple[str, list[str]]:
    """("column", [nested fields]) for a possibly dotted key; a literal dotted column name wins."""
    if key in columns or "." not in key:
        return key, []
    head, *rest = key.split(".")
    return head, rest


def _missing_column(path: Path, key: str, columns: list[str], what: str) -> DataError:
    shown = ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else "")
    option = "data.prompt_key" if what == "prompt" else "data.answer_key"
    return DataError(
        f"{path}: no {what} column {key!r}; the file has: {shown or '(no columns)'}",
        hint=f"set {option} to one of those columns (dotted for struct fields: reward_model.ground_truth)",
    )


def _read_parquet(path: Path, prompt_key: str, answer_key: str) -> tuple[list[str], list[dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"cannot read {path} as parquet: {e}", hint="check that the file is a complete parquet file"
        ) from e
    columns = list(schema.names)
    wanted = []
    for key in (prompt_key, answer_key):
        head, _ = _split_key(key, columns)
        if head not in columns:
            raise _missing_column(path, key, columns, "prompt" if key == prompt_key else "answer")
        wanted.append(head)
    wanted += [c for c in ("data_source", "extra_info") if c in columns and c not in wanted]
    try:
        rows = pq.read_table(path, columns=list(dict.fromkeys(wanted))).to_pylist()
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} holds text that is not valid UTF-8 ({e.reason} at byte {e.start} of a value)",
            hint="re-create the file from a clean source, e.g. archer data prepare dapo-math --strict",
        ) from e
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"cannot read {path}: {e}", hint="check that the file is a complete parquet file"
        ) from e
    return columns, rows


def _read_jsonl(path: Path) -> tuple[list[str], list[dict]]:
    rows: list[dict] = []
    columns: dict[str, None] = {}
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: not valid JSON ({e.msg})",
                        hint="each line of a .jsonl file must be one JSON object",
                    ) from e
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}",
                        hint="each line of a .jsonl file must be one JSON object",
                    )
                columns.update(dict.fromkeys(row))
                rows.append(row)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}", hint="check that the file is UTF-8 JSON lines") from e
    return list(columns), rows


def load_prompts(
    files: list[str], *, prompt_key: str = "prompt", answer_key: str = "reward_model.ground_truth"
) -> list[PromptRecord]:
    """Every row of every file, in order, as a `PromptRecord`.

    `index` is `extra_info.index` when the file has it, else the row's position in its file;
    `data_source` falls back to the file's stem.
    """
    if not files:
        raise DataError(
            "no data files given", hint="set data.train_files, or leave it empty to use data.synth"
        )
    records: list[PromptRecord] = []
    for name in files:
        path = check_input(name)
        if is_parquet(path):
            columns, rows = _read_parquet(path, prompt_key, answer_key)
        else:
            columns, rows = _read_jsonl(path)
        p_head, p_rest = _split_key(prompt_key, columns)
        a_head, a_rest = _split_key(answer_key, columns)
        if rows and p_head not in columns:
            raise _missing_column(path, prompt_key, columns, "prompt")
        if rows and a_head not in columns:
            raise _missing_column(path, answer_key, columns, "answer")
        bad: list[int] = []
        for pos, row in enumerate(rows):
            prompt = _dig(row.get(p_head), p_rest) if p_rest else row.get(p_head)
            answer = _dig(row.get(a_head), a_rest) if a_rest else row.get(a_head)
            if isinstance(answer, bool) or not isinstance(answer, (str, int)) or not str(answer).strip():
                bad.append(pos)
                continue
            if not (isinstance(prompt, str) and prompt.strip()) and not _is_chat(prompt):
                bad.append(pos)
                continue
            info = row.get("extra_info")
            index = info.get("index") if isinstance(info, dict) else None
            source = row.get("data_source")
            records.append(
                PromptRecord(
                    prompt=prompt,
                    answer=str(answer).strip(),
                    data_source=source if isinstance(source, str) and source else path.stem,
                    index=index if isinstance(index, int) and not isinstance(index, bool) else pos,
                )
            )
        if bad:
            shown = ", ".join(str(i) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise DataError(
                f"{path}: {len(bad)} of {len(rows)} rows have no usable prompt ({prompt_key!r}) or answer "
                f"({answer_key!r}), e.g. rows {shown}",
                hint="clean the file first, e.g. archer data prepare dapo-math --input FILE --out DIR",
            )
    return records


def _is_chat(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)
    )
