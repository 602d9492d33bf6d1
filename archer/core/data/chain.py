"""Arithmetic chains worked out step by step: the quickstart's task (`data.synth.task: chain`).

A problem is a chain of single-digit terms, `7+5-3+8=`; the answer is worked out left to right,
one reduction per step, the rest of the chain copied along:

    7+5-3+8=  →  12-3+8=9+8=17

The reward (`reward.function: chain`) grades only the number after the last `=`; the steps are
how a tiny model gets there. Most tokens of a worked answer are copies (the rest of the chain) or
follow from the step before; the few that decide the outcome are the digits of each intermediate
result, above all the tens digit of a step that carries (`7+5` → `12`) or borrows (`12-3` → `9`).

The supervised warm-up's teacher (`teacher_solution`, label noise) forgets the first carry or
borrow of a chain: `7+5` → `2` instead of `12` (it writes the units digit and drops the carry),
`12-3` → `19` (it borrows for the units digit but keeps the tens), then works on correctly from
its wrong value. A model trained on that teacher carries about half of the time; RL with the
final-answer reward teaches it to carry, a rule, so the accuracy on held-out chains rises with
the training reward (the space has ~10^4-10^5 chains; training never sees most of them).

Running values never go below zero for the correct solution (a `-` term is at most the running
value), so every intermediate result is a plain non-negative integer.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from archer.errors import DataError, UsageError

DATA_SOURCE = "chain"
# Warm-up caches are keyed by this module's source (archer/core/warmup.py: WARMUP_CODE), so an
# edit to the generator, the worked-solution format or the teacher never reuses an older warm-up.
_CHAIN = re.compile(r"[0-9]+(?:[+-][0-9]+)+=")
_TERM = re.compile(r"([+-]?)([0-9]+)")


@dataclass(frozen=True)
class ChainSpec:
    """Which chains exist: `terms` terms (min_terms..terms when min_terms is set) of 0..max_operand."""

    terms: int = 4
    max_operand: int = 9
    ops: str = "+-"
    min_terms: int = 0  # 0: every chain has exactly `terms` terms

    @property
    def lengths(self) -> range:
        return range(self.min_terms or self.terms, self.terms + 1)

    def count(self) -> int:
        """How many distinct chains (correct running values >= 0) these settings allow."""
        total = 0
        for k in self.lengths:
            ways = {v: 1 for v in range(self.max_operand + 1)}  # running value -> chains
            for _ in range(k - 1):
                nxt: dict[int, int] = {}
                for v, w in ways.items():
                    for d in range(self.max_operand + 1):
                        if "+" in self.ops:
                            nxt[v + d] = nxt.get(v + d, 0) + w
                        if "-" in self.ops and d <= v:
                            nxt[v - d] = nxt.get(v - d, 0) + w
                ways = nxt
            total += sum(ways.values())
        return total

    def describe(self) -> str:
        n = f"{self.min_terms}-{self.terms}" if self.min_terms and self.min_terms < self.terms else self.terms
        return f"chains of {n} terms 0..{self.max_operand}, ops {self.ops}"


def resolve_chain_spec(terms: int = 4, max_operand: int = 0, ops: str = "", min_terms: int = 0) -> ChainSpec:
    """Validated settings (0 / "" keep the defaults: operands 0..9, `+-`)."""
    if terms < 2:
        raise UsageError(f"a chain needs at least 2 terms (got {terms})", hint="set data.synth.terms=4")
    if min_terms and not 2 <= min_terms <= terms:
        raise UsageError(
            f"data.synth.min_terms must be in 2..terms={terms} (got {min_terms})",
            hint="0 means all chains have `terms` terms",
        )
    bad = sorted(set(ops) - set("+-"))
    if bad:
        raise UsageError(
            f"chains use '+' and '-' only (got {''.join(bad)!r})", hint="set data.synth.ops='+-'"
        )
    max_operand = max_operand or 9
    if max_operand > 99:
        raise UsageError(
            f"chain operands go up to 99 (got {max_operand})", hint="set data.synth.max_operand=9"
        )
    return ChainSpec(terms, max_operand, "".join(dict.fromkeys(ops)) or "+-", min_terms)


def parse_chain(text: str) -> list[tuple[str, int]]:
    """`7+5-3=` → [("+", 7), ("+", 5), ("-", 3)] (the first term's sign is "+")."""
    if not _CHAIN.fullmatch(text):
        raise ValueError(f"not a chain: {text!r}")
    return [(s or "+", int(v)) for s, v in _TERM.findall(text[:-1])]


def _apply(value: int, op: str, d: int) -> int:
    return value + d if op == "+" else value - d


def carries(value: int, op: str, d: int) -> bool:
    """Does `value op d` carry (a units-digit sum past 9) or borrow (a units digit below d, value >= 10)?"""
    if op == "+":
        return value % 10 + d % 10 >= 10
    return value % 10 < d % 10 and value >= 10


def forgot_carry(value: int, op: str, d: int) -> int:
    """What a teacher who forgets the carry (or the borrow) writes for `value op d`."""
    return _apply(value, op, d) + (-10 if op == "+" else 10)


# The warm-up teacher's slips (warmup.slip): `carry` forgets the chain's first carry or borrow (no
# slip in a chain without one); `first_step` writes the first intermediate result one too high, in
# every chain. Either way the teacher works on correctly from its wrong value.
SLIPS = ("carry", "first_step")


def worked_steps(text: str, *, slip: bool | str = False) -> list[str]:
    """The steps of the worked solution of chain `text`: ["12-3+8", "9+8", "17"].

    `slip`: the teacher's slip, one of SLIPS (True means `carry`, the first carry or borrow
    forgotten: no change if the chain has none)."""
    kind = "carry" if slip is True else (slip or None)
    if kind is not None and kind not in SLIPS:
        raise ValueError(f"unknown chain slip {kind!r} (one of {', '.join(SLIPS)})")
    terms = parse_chain(text)
    value = terms[0][1]
    steps, slipped = [], kind is None
    for i in range(1, len(terms)):
        op, d = terms[i]
        if not slipped and kind == "first_step":
            value, slipped = _apply(value, op, d) + 1, True
        elif not slipped and carries(value, op, d):
            value, slipped = forgot_carry(value, op, d), True
        else:
            value = _apply(value, op, d)
        rest = "".join(f"{o}{v}" for o, v in terms[i + 1 :])
        steps.append(f"{value}{rest}")
    return steps


def worked_solution(text: str, *, slip: bool | str = False) -> str:
    """`7+5-3+8=` → `12-3+8=9+8=17` (the response a correct teacher writes)."""
    return "=".join(worked_steps(text, slip=slip))


def chain_value(text: str) -> int:
    value = 0
    for op, d in parse_chain(text):
        value = _apply(value, op, d)
    return value


def has_carry(text: str) -> bool:
    terms = parse_chain(text)
    value = terms[0][1]
    for op, d in terms[1:]:
        if carries(value, op, d):
            return True
        value = _apply(value, op, d)
    return False


def decisive_char_positions(text: str) -> list[int]:
    """Character offsets, in the worked solution of chain `text`, of the digits of every
    intermediate and final result (the tokens that decide the answer; the rest are copies of the
    chain and `=`). The first of them at a carry or borrow is where the warm-up's teacher slips."""
    out, pos = [], 0
    for step in worked_steps(text):
        head = re.match(r"[0-9]+", step).group(0)
        out += range(pos, pos + len(head))
        pos += len(step) + 1
    return out


def result_digit_mask(tokens: Sequence[str]) -> list[bool]:
    """Per token of a worked response (as the tokens' texts), whether it is a digit of an
    intermediate or final result: the number that opens each `=`-separated step, e.g. `12`, `9`
    and `17` in `12-3+8=9+8=17` (with the sign of a negative one). Defined on the response
    itself, so a wrong response's results count too (they are what the model decided); the
    other tokens are copies of the chain or `=`."""
    out, at_head, first = [], True, True
    for tok in tokens:
        head = at_head and (tok.isdigit() or (first and tok == "-"))  # a negative result's sign too
        out.append(head)
        at_head, first = (True, True) if tok == "=" else (head, False)
    return out


def _sample(spec: ChainSpec, rng: random.Random) -> str:
    k = rng.choice(list(spec.lengths))
    value = rng.randint(0, spec.max_operand)
    text = str(value)
    for _ in range(k - 1):
        op = rng.choice(spec.ops)
        if op == "-" and value == 0 and "+" in spec.ops:
            op = "+"
        d = rng.randint(0, spec.max_operand if op == "+" else min(value, spec.max_operand))
        value = _apply(value, op, d)
        text += f"{op}{d}"
    return text + "="


def make_chains(
    n: int, *, seed: int, spec: ChainSpec, split: str = "train", exclude: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """`n` distinct chains as verl rows (none in `exclude`); deterministic in (seed, split, spec)."""
    if n < 0:
        raise UsageError(f"n must be >= 0 (got {n})")
    excluded = set(exclude)
    available = spec.count() - sum(1 for t in excluded if _in_spec(t, spec))
    if n > available // 2:  # rejection sampling slows down near the whole space; refuse early
        raise DataError(
            f"asked for {n} {split} chains but {spec.describe()} allows only {available}"
            + (" besides the excluded ones" if excluded else "")
            + "; at most half of them can be drawn",
            hint="lower data.synth.n/val_n, or raise data.synth.terms or max_operand",
        )
    rng = random.Random(f"archer-chain:{seed}:{split}")
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        text = _sample(spec, rng)
        if text in seen or text in excluded:
            continue
        seen.add(text)
        rows.append(
            {
                "prompt": [{"role": "user", "content": text}],
                "data_source": DATA_SOURCE,
                "ability": "arithmetic",
                "reward_model": {"ground_truth": str(chain_value(text)), "style": "rule"},
                "extra_info": {
                    "index": len(rows),
                    "split": split,
                    "solution": worked_solution(text),
                    "carry": has_carry(text),
                },
            }
        )
    return rows


def _in_spec(text: str, spec: ChainSpec) -> bool:
    try:
        terms = parse_chain(text)
    except ValueError:
        return False
    if len(terms) not in spec.lengths or any(d > spec.max_operand for _, d in terms):
        return False
    if any(op not in spec.ops for op, _ in terms[1:]):
        return False
    value = terms[0][1]
    for op, d in terms[1:]:
        value = _apply(value, op, d)
        if value < 0:
            return False
    return True


def write_chains(
    out_dir: str | os.PathLike, *, n: int, val_n: int, seed: int, spec: ChainSpec
) -> dict[str, Any]:
    """Write `train.parquet` (n rows) and `val.parquet` (val_n held-out rows, disjoint from train)."""
    import pyarrow as pa

    from archer.core.data import verl_schema, write_split_rows

    val = make_chains(val_n, seed=seed, spec=spec, split="val")
    train = make_chains(
        n, seed=seed, spec=spec, split="train", exclude={r["prompt"][0]["content"] for r in val}
    )
    schema = verl_schema([("solution", pa.string()), ("carry", pa.bool_())])
    paths = write_split_rows(out_dir, train, val, schema)
    return {"paths": paths, "counts": {"train": len(train), "val": len(val)}, "spec": spec.describe()}
