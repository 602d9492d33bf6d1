"""The synthetic arithmetic task: seeded, disjoint splits, the documented ranges, correct answers."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from archer.cli.main import app
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
