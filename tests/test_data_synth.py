"""The synthetic arithmetic task: seeded, disjoint splits, the documented ranges, correct answers."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.data.chain import (
    ChainSpec,
    carries,
    chain_value,
    decisive_char_positions,
    make_chains,
    parse_chain,
    resolve_chain_spec,
    result_digit_mask,
    worked_solution,
    worked_steps,
    write_chains,
)
from archer.core.data.synth import make_arithmetic, resolve_spec, write_arithmetic
from archer.errors import DataError, UsageError

PROBLEM = re.compile(r"([0-9]+)([+\-*])([0-9]+)=")
VOCAB = set("0123456789+-*=")


def _parse(row: dict) -> tuple[int, str, int]:
    m = PROBLEM.fullmatch(row["prompt"][0]["content"])
    assert m is not None, row
    return int(m.group(1)), m.group(2), int(m.group(3))


def test_same_seed_same_rows_other_seed_other_rows():
    a = make_arithmetic(300, seed=7, difficulty="medium")
    assert a == make_arithmetic(300, seed=7, difficulty="medium")
    assert a != make_arithmetic(300, seed=8, difficulty="medium")
    assert a != make_arithmetic(300, seed=7, difficulty="medium", split="val")


@pytest.mark.parametrize(
    "difficulty,max_operand,ops,non_negative",
    [("easy", 99, "+-", True), ("medium", 999, "+-", False), ("hard", 999, "+-*", False)],
)
def test_difficulty_presets(difficulty, max_operand, ops, non_negative):
    rows = make_arithmetic(3000, seed=0, difficulty=difficulty)
    seen_ops, operands, answers = set(), [], []
    for i, row in enumerate(rows):
        a, op, b = _parse(row)
        seen_ops.add(op)
        operands += [a, b]
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        answers.append(answer)
        assert row["reward_model"] == {"ground_truth": str(answer), "style": "rule"}
        assert row["extra_info"] == {"index": i, "split": "train", "a": a, "b": b, "op": op}
        assert set(row["prompt"][0]["content"] + row["reward_model"]["ground_truth"]) <= VOCAB
        assert row["prompt"][0]["role"] == "user" and row["data_source"] == "arithmetic"
    assert seen_ops == set(ops)
    assert 0 <= min(operands) and max(operands) <= max_operand
    assert max(operands) > max_operand * 0.9  # the range is used, not just its bottom
    assert (min(answers) >= 0) == non_negative
    assert len({r["prompt"][0]["content"] for r in rows}) == len(rows)


def test_overrides_replace_the_preset_values():
    rows = make_arithmetic(36, seed=1, difficulty="easy", max_operand=5, ops="*")
    assert {(_parse(r)[1]) for r in rows} == {"*"}
    assert len({r["prompt"][0]["content"] for r in rows}) == 36  # all of 0..5 x 0..5
    assert resolve_spec("hard", ops="+-+").ops == "+-"
    with pytest.raises(UsageError, match="unknown operator"):
        make_arithmetic(1, seed=0, ops="/")
    with pytest.raises(UsageError, match="unknown difficulty"):
        make_arithmetic(1, seed=0, difficulty="extreme")


def test_too_many_problems_is_a_clear_error():
    # max_operand=2, "+" only: 9 distinct problems
    assert len(make_arithmetic(9, seed=0, max_operand=2, ops="+")) == 9
    with pytest.raises(DataError, match="only 9 distinct problems"):
        make_arithmetic(10, seed=0, max_operand=2, ops="+")
    rows = make_arithmetic(8, seed=0, max_operand=2, ops="+", exclude={"1+1=", "not a problem"})
    assert "1+1=" not in {r["prompt"][0]["content"] for r in rows}
    with pytest.raises(DataError, match="only 8 distinct"):
        make_arithmetic(9, seed=0, max_operand=2, ops="+", exclude={"1+1="})
    # easy subtraction keeps a >= b: 0..99 gives 100*100 sums + 5050 differences
    assert resolve_spec("easy").size == 15050
    with pytest.raises(DataError) as e:
        write_arithmetic("unused", n=15000, val_n=100, seed=0)
    assert "15050" in e.value.message and e.value.hint


def test_write_arithmetic_files(tmp_path):
    result = write_arithmetic(tmp_path / "a", n=2000, val_n=200, seed=3, difficulty="hard")
    assert result["counts"] == {"train": 2000, "val": 200}
    train = pq.read_table(result["paths"]["train"])
    val = pq.read_table(result["paths"]["val"])
    assert train.num_rows == 2000 and val.num_rows == 200
    assert train.column_names == ["prompt", "data_source", "ability", "reward_model", "extra_info"]
    assert train.schema.field("prompt").type.value_type == pa.struct(
        [("role", pa.string()), ("content", pa.string())]
    )
    assert train.schema.field("reward_model").type == pa.struct(
        [("ground_truth", pa.string()), ("style", pa.string())]
    )
    extra = train.schema.field("extra_info").type
    assert [(f.name, f.type) for f in extra] == [
        ("index", pa.int64()),
        ("split", pa.string()),
        ("a", pa.int64()),
        ("b", pa.int64()),
        ("op", pa.string()),
    ]
    train_text = {r[0]["content"] for r in train.column("prompt").to_pylist()}
    val_text = {r[0]["content"] for r in val.column("prompt").to_pylist()}
    assert len(train_text) == 2000 and len(val_text) == 200 and not train_text & val_text
    assert {e["split"] for e in val.column("extra_info").to_pylist()} == {"val"}
    assert [e["index"] for e in train.column("extra_info").to_pylist()] == list(range(2000))

    again = write_arithmetic(tmp_path / "b", n=2000, val_n=200, seed=3, difficulty="hard")
    assert pq.read_table(again["paths"]["train"]).equals(train)
    assert pq.read_table(again["paths"]["val"]).equals(val)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["train.parquet", "val.parquet"]


def test_cli_synth_arithmetic(tmp_path):
    out = tmp_path / "arith"
    result = CliRunner().invoke(
        app, ["data", "synth", "arithmetic", "--out", str(out), "--n", "120", "--val-n", "12", "--seed", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "train rows" in result.stdout and "120" in result.stdout and "12" in result.stdout
    assert "archer train --preset quickstart" in result.stdout
    assert pq.read_table(out / "train.parquet").num_rows == 120
    assert pq.read_table(out / "val.parquet").num_rows == 12


def test_cli_synth_errors(tmp_path):
    runner = CliRunner()
    too_many = runner.invoke(app, ["data", "synth", "arithmetic", "--out", str(tmp_path), "--n", "20000"])
    assert too_many.exit_code == 1
    assert "distinct problems" in too_many.output and "Traceback" not in too_many.output
    bad_choice = runner.invoke(
        app, ["data", "synth", "arithmetic", "--out", str(tmp_path), "--difficulty", "x"]
    )
    assert bad_choice.exit_code == 2
    no_out = runner.invoke(app, ["data", "synth", "arithmetic"])
    assert no_out.exit_code == 2 and "--out" in no_out.output


# ------------------------------------------------------------------------------------------------
# The chain task (the quickstart's): worked solutions, the teacher's slip, seeded distinct rows
# ------------------------------------------------------------------------------------------------


def _all_chains(spec: ChainSpec) -> set[str]:
    """Every chain the spec allows, by brute force (running values >= 0)."""
    out: set[str] = set()

    def grow(text: str, value: int, left: int) -> None:
        if left == 0:
            out.add(text + "=")
            return
        for op in spec.ops:
            for d in range(spec.max_operand + 1):
                v = value + d if op == "+" else value - d
                if v >= 0:
                    grow(f"{text}{op}{d}", v, left - 1)

    for k in spec.lengths:
        for first in range(spec.max_operand + 1):
            grow(str(first), first, k - 1)
    return out


def test_chain_worked_solution_and_the_teachers_slip():
    assert worked_solution("7+5-3+8=") == "12-3+8=9+8=17"
    assert worked_steps("7+5-3+8=") == ["12-3+8", "9+8", "17"]
    assert chain_value("7+5-3+8=") == 17
    # the sloppy teacher forgets the first carry (7+5 -> 2) and works on correctly from its value
    assert worked_solution("7+5-3+8=", slip=True) == "2-3+8=-1+8=7"
    # ... or the first borrow (12-3 -> 19: it borrows for the units but keeps the tens)
    assert worked_solution("12-3=", slip=True) == "19"
    # only the first carry: 9+9 -> 8, then 8+9 = 17 is carried correctly
    assert worked_solution("9+9+9=", slip=True) == "8+9=17"
    # a chain without a carry or borrow: the teacher is right
    assert worked_solution("1+2-3+4=", slip=True) == worked_solution("1+2-3+4=") == "3-3+4=0+4=4"
    assert carries(7, "+", 5) and not carries(7, "+", 2) and carries(12, "-", 3) and not carries(9, "-", 3)
    # decisive tokens: the digits of every result (the rest copies the chain)
    solution = worked_solution("7+5-3+8=")
    assert decisive_char_positions("7+5-3+8=") == [0, 1, 7, 11, 12]
    assert "".join(solution[i] for i in decisive_char_positions("7+5-3+8=")) == "12" + "9" + "17"
    with pytest.raises(ValueError):
        parse_chain("7+5")


def test_chain_first_step_slip_is_one_too_high_then_worked_on():
    # warmup.slip=first_step: the first result one too high in every chain, the rest worked on
    # correctly from it (carry or not)
    assert worked_solution("7+5-3+8=", slip="first_step") == "13-3+8=10+8=18"
    assert worked_solution("1+2-3+4=", slip="first_step") == "4-3+4=1+4=5"
    assert worked_solution("12-3=", slip="first_step") == "10"
    assert worked_solution("7+5-3+8=", slip="carry") == worked_solution("7+5-3+8=", slip=True)
    with pytest.raises(ValueError, match="unknown chain slip"):
        worked_solution("7+5=", slip="sign")


@pytest.mark.parametrize(
    "spec",
    [ChainSpec(2, 3, "+-"), ChainSpec(3, 4, "+-"), ChainSpec(3, 5, "+"), ChainSpec(4, 3, "-+", min_terms=2)],
)
def test_chain_space_is_counted_exactly(spec):
    assert spec.count() == len(_all_chains(spec))


def test_chain_rows_are_seeded_distinct_and_correct():
    spec = resolve_chain_spec(4)
    rows = make_chains(3000, seed=3, spec=spec)
    assert rows == make_chains(3000, seed=3, spec=spec)
    assert rows != make_chains(3000, seed=4, spec=spec)
    texts = [r["prompt"][0]["content"] for r in rows]
    assert len(set(texts)) == 3000 and set(texts) <= _all_chains(spec)
    for i, (r, text) in enumerate(zip(rows, texts)):
        assert r["data_source"] == "chain" and r["extra_info"]["index"] == i
        gold = eval(text[:-1])  # noqa: S307 - digits and +- only (checked by _all_chains)
        assert r["reward_model"] == {"ground_truth": str(gold), "style": "rule"}
        assert r["extra_info"]["solution"].endswith(f"={gold}") or r["extra_info"]["solution"] == str(gold)
    share_carry = sum(r["extra_info"]["carry"] for r in rows) / len(rows)
    assert 0.3 < share_carry < 0.8  # a good share of chains carries or borrows: where the teacher slips
    assert {len(r["extra_info"]["solution"]) + 1 for r in rows} <= set(range(8, 20))  # response tokens


def test_chain_files_are_disjoint_and_limits_are_clear_errors(tmp_path):
    spec = resolve_chain_spec(4, min_terms=3)
    result = write_chains(tmp_path / "a", n=1500, val_n=200, seed=2, spec=spec)
    train = pq.read_table(result["paths"]["train"]).to_pylist()
    val = pq.read_table(result["paths"]["val"]).to_pylist()
    assert result["counts"] == {"train": 1500, "val": 200}
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in val}
    assert {len(parse_chain(r["prompt"][0]["content"])) for r in train} == {3, 4}
    again = write_chains(tmp_path / "b", n=1500, val_n=200, seed=2, spec=spec)
    assert pq.read_table(again["paths"]["train"]).to_pylist() == train
    small = ChainSpec(2, 3, "+")  # 16 chains: at most half may be drawn
    assert len(make_chains(8, seed=0, spec=small)) == 8
    with pytest.raises(DataError, match="allows only 16"):
        make_chains(9, seed=0, spec=small)
    with pytest.raises(UsageError, match="at least 2 terms"):
        resolve_chain_spec(1)
    with pytest.raises(UsageError, match="'\\*'"):
        resolve_chain_spec(4, ops="+*")
    with pytest.raises(UsageError, match="min_terms"):
        resolve_chain_spec(4, min_terms=5)


def test_result_digit_mask_marks_the_results_of_any_worked_response():
    def marked(text: str, extra: tuple[str, ...] = ()) -> str:
        tokens = [*text, *extra]
        return "".join(t if m else "." for t, m in zip(tokens, result_digit_mask(tokens)))

    assert marked("12-3+8=9+8=17", ("<eos>",)) == "12.....9...17."
    # a wrong response: its own results count (the teacher's slip, a negative running value)
    assert marked("2-3+8=-1+8=7") == "2.....-1...7"
    # the same positions as decisive_char_positions on the worked solution
    chain = "7+5-3+8="
    sol = worked_solution(chain)
    assert [i for i, m in enumerate(result_digit_mask(list(sol))) if m] == decisive_char_positions(chain)
