"""Seeded two-operand arithmetic problems (`23+45=` → `68`) for the tiny character-level model.

Prompts and answers use only `0123456789+-*=`, which is the whole vocabulary of archer's char
tokenizer. Difficulty presets (an explicit `max_operand`/`ops` overrides the preset's value):

- easy:   operands 0..99,  `+ -`,   answers never negative (for `-` the larger operand is first)
- medium: operands 0..999, `+ -`,   negative answers allowed
- hard:   operands 0..999, `+ - *`, negative answers allowed

Problems are sampled without replacement from the finite set the settings allow, so a split
never repeats a problem, validation and training are disjoint, and asking for more problems than
exist is an error rather than silent duplication.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from math import isqrt
from typing import Any

from archer.errors import DataError, UsageError

DIFFICULTIES = ("easy", "medium", "hard")
OPS = "+-*"
DATA_SOURCE = "arithmetic"
_PROBLEM = re.compile(r"([0-9]+)([+\-*])([0-9]+)=")


@dataclass(frozen=True)
class ArithmeticSpec:
    """The resolved settings: which problems exist."""

    difficulty: str
    max_operand: int
    ops: str
    non_negative: bool

    def _count(self, op: str) -> int:
        m = self.max_operand + 1
        return m * (m + 1) // 2 if (op == "-" and self.non_negative) else m * m

    @property
    def size(self) -> int:
        """How many distinct problems these settings allow."""
        return sum(self._count(op) for op in self.ops)

    def decode(self, idx: int) -> tuple[int, str, int]:
        """Problem number `idx` (0 <= idx < size) as (a, op, b)."""
        for op in self.ops:
            count = self._count(op)
            if idx < count:
                if op == "-" and self.non_negative:  # pairs a >= b, enumerated row by row
                    a = (isqrt(8 * idx + 1) - 1) // 2
                    return a, op, idx - a * (a + 1) // 2
                return divmod(idx, self.max_operand + 1)[0], op, idx % (self.max_operand + 1)
            idx -= count
        raise IndexError(idx)

    def contains(self, text: str) -> bool:
        m = _PROBLEM.fullmatch(text)
        if m is None or m.group(2) not in self.ops:
            return False
        a, b = int(m.group(1)), int(m.group(3))
        if str(a) != m.group(1) or str(b) != m.group(3):  # leading zeros: not a problem we make
            return False
        if a > self.max_operand or b > self.max_operand:
            return False
        return not (m.group(2) == "-" and self.non_negative and a < b)

    def describe(self) -> str:
        sign = ", answers >= 0" if self.non_negative and "-" in self.ops else ""
        return f"{self.difficulty}: operands 0..{self.max_operand}, ops {self.ops}{sign}"


_PRESETS = {
    "easy": (99, "+-", True),
    "medium": (999, "+-", False),
    "hard": (999, "+-*", False),
}


def resolve_spec(difficulty: str = "easy", max_operand: int = 0, ops: str = "") -> ArithmeticSpec:
    """A difficulty preset with the explicit overrides applied (0 / "" keep the preset's value)."""
    if difficulty not in _PRESETS:
        raise UsageError(f"unknown difficulty {difficulty!r}", hint=f"use one of: {', '.join(DIFFICULTIES)}")
    preset_max, preset_ops, non_negative = _PRESETS[difficulty]
    if max_operand < 0:
        raise UsageError(
            f"max_operand must be >= 0 (got {max_operand})", hint="0 keeps the difficulty's value"
        )
    bad = sorted(set(ops) - set(OPS))
    if bad:
        raise UsageError(
            f"unknown operator(s) {''.join(bad)!r} in ops {ops!r}",
            hint="ops is made of '+', '-' and '*', e.g. '+-'",
        )
    ops = "".join(dict.fromkeys(ops)) or preset_ops  # dedupe, keep order
    return ArithmeticSpec(difficulty, max_operand or preset_max, ops, non_negative)


def _answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _row(a: int, op: str, b: int, index: int, split: str) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": f"{a}{op}{b}="}],
        "data_source": DATA_SOURCE,
        "ability": "arithmetic",
        "reward_model": {"ground_truth": str(_answer(a, op, b)), "style": "rule"},
        "extra_info": {"index": index, "split": split, "a": a, "b": b, "op": op},
    }


def _too_many(n: int, what: str, spec: ArithmeticSpec, available: int) -> DataError:
    return DataError(
        f"asked for {n} {what} but {spec.describe()} has only {available} distinct problems",
        hint="lower --n/--val-n (data.synth.n/val_n), or raise --max-operand or pick a harder --difficulty",
    )


def make_arithmetic(
    n: int,
    *,
    seed: int,
    difficulty: str = "easy",
    max_operand: int = 0,
    ops: str = "",
    split: str = "train",
    exclude: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """`n` distinct problems as verl rows, none of whose prompt text is in `exclude`.

    Deterministic in (seed, split, settings): the same call gives the same rows in the same order.
    """
    if n < 0:
        raise UsageError(f"n must be >= 0 (got {n})")
    spec = resolve_spec(difficulty, max_operand, ops)
    excluded = set(exclude or ())
    blocked = sum(1 for text in excluded if spec.contains(text))
    if n > spec.size - blocked:
        raise _too_many(
            n,
            f"{split} problems" + (" besides the excluded ones" if blocked else ""),
            spec,
            spec.size - blocked,
        )
    rng = random.Random(f"archer-arithmetic:{seed}:{split}")
    rows: list[dict[str, Any]] = []
    for idx in rng.sample(range(spec.size), min(spec.size, n + blocked)):
        if len(rows) == n:
            break
        a, op, b = spec.decode(idx)
        if blocked and f"{a}{op}{b}=" in excluded:
            continue
        rows.append(_row(a, op, b, len(rows), split))
    return rows


def write_arithmetic(
    out_dir: str | os.PathLike,
    *,
    n: int,
    val_n: int,
    seed: int,
    difficulty: str = "easy",
    max_operand: int = 0,
    ops: str = "",
) -> dict[str, Any]:
    """Write `train.parquet` (n rows) and `val.parquet` (val_n rows, disjoint from train).

    Returns {"paths": {"train", "val"}, "counts": {"train", "val"}, "spec": description}.
    """
    import pyarrow as pa

    from archer.core.data import verl_schema, write_split_rows

    spec = resolve_spec(difficulty, max_operand, ops)
    if n + val_n > spec.size:
        raise _too_many(n + val_n, f"problems ({n} train + {val_n} val)", spec, spec.size)
    val = make_arithmetic(
        val_n, seed=seed, difficulty=difficulty, max_operand=max_operand, ops=ops, split="val"
    )
    train = make_arithmetic(
        n,
        seed=seed,
        difficulty=difficulty,
        max_operand=max_operand,
        ops=ops,
        split="train",
        exclude={r["prompt"][0]["content"] for r in val},
    )
    schema = verl_schema([("a", pa.int64()), ("b", pa.int64()), ("op", pa.string())])
    paths = write_split_rows(out_dir, train, val, schema)
    return {"paths": paths, "counts": {"train": len(train), "val": len(val)}, "spec": spec.describe()}


# --------------------------------------------------------------------------------------------
# Tool tasks (agent.enable): problems a tiny model can only solve by calling a tool
# --------------------------------------------------------------------------------------------

TOOL_TASKS = ("tool_arithmetic", "corpus_qa", "tool_mix")
CORPUS_FILE = "corpus.parquet"
_THINGS = ("ships", "coins", "towers", "lamps", "books", "horses", "keys", "drums", "bells", "boats")
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _entity(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3))


def make_corpus(size: int, *, seed: int) -> list[dict[str, Any]]:
    """`size` one-line documents "<name> has <count> <things>." with distinct names (seeded)."""
    rng = random.Random(f"archer-corpus:{seed}")
    names: dict[str, None] = {}
    while len(names) < size:
        names.setdefault(_entity(rng))
    return [
        {"id": i, "title": name, "text": f"{name} has {rng.randint(10, 9999)} {rng.choice(_THINGS)}."}
        for i, name in enumerate(names)
    ]


def _tool_row(
    prompt: str, answer: str, source: str, tool: str, call: str, index: int, split: str
) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "data_source": source,
        "ability": "tool_use",
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": index, "split": split, "tool": tool, "call": call},
    }


def make_tool_arithmetic(
    n: int, *, seed: int, split: str, max_operand: int = 999, exclude: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """`a*b=` with 100 <= a, b <= max_operand: far beyond what a tiny model multiplies in its head.
    The tool call a demonstration would make is `<python>a*b</python>`."""
    lo = 100
    if max_operand < lo:
        raise UsageError(f"tool_arithmetic needs max_operand >= {lo} (got {max_operand})")
    size = (max_operand - lo + 1) ** 2
    excluded = set(exclude)
    if n + len(excluded) > size:
        raise DataError(
            f"asked for {n} tool_arithmetic problems but operands {lo}..{max_operand} give only {size}"
        )
    rng = random.Random(f"archer-tool-arithmetic:{seed}:{split}")
    rows: list[dict[str, Any]] = []
    for idx in rng.sample(range(size), min(size, n + len(excluded))):
        if len(rows) == n:
            break
        a, b = lo + idx // (max_operand - lo + 1), lo + idx % (max_operand - lo + 1)
        prompt = f"{a}*{b}="
        if prompt in excluded:
            continue
        rows.append(_tool_row(prompt, str(a * b), "tool_arithmetic", "python", f"{a}*{b}", len(rows), split))
    return rows


def make_corpus_qa(docs: list[dict[str, Any]], *, split: str) -> list[dict[str, Any]]:
    """One question per document, "<things> of <name>?", answered by the count the document gives.
    The search a demonstration would make is `<search><name> <things></search>`."""
    rows = []
    for d in docs:
        name, _, rest = d["text"].partition(" has ")
        count, thing = rest.rstrip(".").split(" ", 1)
        rows.append(
            _tool_row(
                f"{thing} of {name}?", count, "corpus_qa", "search", f"{name} {thing}", len(rows), split
            )
        )
    return rows


def write_tool_task(
    out_dir: str | os.PathLike, *, task: str, n: int, val_n: int, seed: int, max_operand: int = 0
) -> dict[str, Any]:
    """Write train/val parquet files of a tool task, plus `corpus.parquet` for the search tasks.

    tool_mix alternates the two kinds (half each). Returns {"paths", "counts", "corpus"}."""
    import pyarrow as pa

    from archer.core.data import TRAIN_FILE, VAL_FILE, prepare_out_dir, verl_schema, write_tables_atomic

    if task not in TOOL_TASKS:
        raise UsageError(f"unknown tool task {task!r}", hint=f"use one of: {', '.join(TOOL_TASKS)}")
    max_operand = max_operand or 999
    n_qa = {"tool_arithmetic": 0, "corpus_qa": n, "tool_mix": n // 2}[task]
    v_qa = {"tool_arithmetic": 0, "corpus_qa": val_n, "tool_mix": val_n // 2}[task]
    docs = make_corpus(n_qa + v_qa, seed=seed) if n_qa + v_qa else []
    val = make_tool_arithmetic(val_n - v_qa, seed=seed, split="val", max_operand=max_operand)
    train = make_tool_arithmetic(
        n - n_qa,
        seed=seed,
        split="train",
        max_operand=max_operand,
        exclude={r["prompt"][0]["content"] for r in val},
    )
    train = _interleave(train, make_corpus_qa(docs[:n_qa], split="train"))
    val = _interleave(val, make_corpus_qa(docs[n_qa:], split="val"))
    for split_rows in (train, val):
        for i, r in enumerate(split_rows):
            r["extra_info"]["index"] = i
    schema = verl_schema([("tool", pa.string()), ("call", pa.string())])
    out = prepare_out_dir(out_dir)
    paths = {"train": out / TRAIN_FILE, "val": out / VAL_FILE}
    tables = {
        paths["train"]: pa.Table.from_pylist(train, schema=schema),
        paths["val"]: pa.Table.from_pylist(val, schema=schema),
    }
    corpus = None
    if docs:
        corpus = out / CORPUS_FILE
        tables[corpus] = pa.Table.from_pylist(docs)
    write_tables_atomic(tables)
    return {"paths": paths, "counts": {"train": len(train), "val": len(val)}, "corpus": corpus}


def _interleave(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(max(len(a), len(b))):
        out += ([a[i]] if i < len(a) else []) + ([b[i]] if i < len(b) else [])
    return out
