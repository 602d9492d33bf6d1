"""prepare_dapo_math and `archer data prepare dapo-math` on small fixture files of both DAPO formats."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.data import dapo_math
from archer.core.data.dapo_math import prepare_dapo_math
from archer.errors import DataError, UsageError

PRE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
SUF = '\n\nRemember to put your answer on its own line after "Answer:".'
COLUMNS = ["prompt", "data_source", "ability", "reward_model", "extra_info"]
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

EN = [(f"What is {i} times 3?", str(3 * i)) for i in range(12)]
CN = [(f"计算 {i} 加 5 的值。", str(i + 5)) for i in range(3)]


def raw_row(problem, answer, index, *, wrapped=True):
    content = PRE + problem + SUF if wrapped and problem is not None else problem
    return {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": content}],
        "ability": "MATH",
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": f"id-{index}"},
    }


def processed_row(problem, answer, index):
    row = raw_row(problem, answer, index)
    return {
        "prompt": row["prompt"][0]["content"],
        "solution": answer,
        "data_source": "math_dapo",
        "source_prompt": row["prompt"],
        "ability": "MATH",
        "reward_model": row["reward_model"],
        "extra_info": {"index": index},
    }


def raw_rows():
    """48 rows: 15 usable problems (12 en x3 copies, 3 cn), one conflicting problem, 6 bad rows."""
    rows = [raw_row(p, a, i) for _ in range(3) for i, (p, a) in enumerate(EN)]
    rows += [raw_row(p, a, 100 + i) for i, (p, a) in enumerate(CN)]
    rows += [raw_row("A problem with two answers?", a, 200 + i) for i, a in enumerate(["1", "2", "1"])]
    rows.append({**raw_row("x", "1", 300), "prompt": None})  # missing prompt
    rows.append(raw_row("   ", "1", 301))  # empty prompt
    rows.append(raw_row("", "1", 302))  # nothing but the wrapper: empty prompt
    rows.append({**raw_row("no reward model", "1", 303), "reward_model": None})  # missing answer
    rows.append(raw_row("null answer", None, 304))  # missing answer
    rows.append(raw_row("blank answer", " ", 305))  # empty answer
    return rows


RAW_BAD = {
    "missing_prompt": 1,
    "empty_prompt": 2,
    "missing_answer": 2,
    "empty_answer": 1,
    "conflicting_answer": 3,
}


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path, rows, extra_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def read(path):
    return pq.read_table(path)


def _check_layout(table, split):
    assert table.column_names == COLUMNS
    assert table.schema.field("prompt").type.value_type == MESSAGE
    assert table.schema.field("data_source").type == pa.string()
    assert table.schema.field("ability").type == pa.string()
    assert table.schema.field("reward_model").type == pa.struct(
        [("ground_truth", pa.string()), ("style", pa.string())]
    )
    extra = table.schema.field("extra_info").type
    assert [(f.name, f.type) for f in extra] == [
        ("index", pa.int64()),
        ("split", pa.string()),
        ("original_index", pa.string()),
        ("source_row", pa.int64()),
        ("language", pa.string()),
    ]
    info = table["extra_info"].to_pylist()
    assert [e["index"] for e in info] == list(range(table.num_rows))
    assert {e["split"] for e in info} <= {split}


def test_raw_parquet_counts_layout_and_split(tmp_path):
    src = write_parquet(tmp_path / "raw.parquet", raw_rows())
    report = prepare_dapo_math(src, tmp_path / "out", val_size=4, seed=1)
    assert report.input_format == "raw"
    assert report.rows_read == 48
    assert report.bad == RAW_BAD and report.bad_rows == 9
    assert report.duplicates_removed == 24 and report.conflicting_prompts == 1
    assert report.unique_prompts == 15 and report.language_filtered == 0
    assert (report.train_rows, report.val_rows) == (11, 4)
    assert report.rows_read == report.bad_rows + report.duplicates_removed + report.unique_prompts

    train, val = read(report.paths["train"]), read(report.paths["val"])
    _check_layout(train, "train")
    _check_layout(val, "val")
    assert (train.num_rows, val.num_rows) == (11, 4)
    got = {}
    for table in (train, val):
        for prompt, reward, info in zip(
            *(table[c].to_pylist() for c in ("prompt", "reward_model", "extra_info"))
        ):
            [message] = prompt
            assert message["role"] == "user" and message["content"].startswith("Solve the following")
            got[message["content"]] = (reward["ground_truth"], info["original_index"], info["source_row"])
            assert reward["style"] == "rule"
    expected = {PRE + p + SUF: (a, f"id-{i}", i) for i, (p, a) in enumerate(EN)}  # the first copies
    expected |= {PRE + p + SUF: (a, f"id-{100 + i}", 36 + i) for i, (p, a) in enumerate(CN)}
    assert got == expected
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.parquet", "val.parquet"]


def test_split_is_seeded_and_disjoint(tmp_path):
    src = write_parquet(tmp_path / "raw.parquet", raw_rows())

    def split(seed, name):
        r = prepare_dapo_math(src, tmp_path / name, val_size=5, seed=seed, strip_instruction=True)
        texts = [{m[0]["content"] for m in read(r.paths[s])["prompt"].to_pylist()} for s in ("train", "val")]
        return r, texts

    r1, (train1, val1) = split(3, "a")
    _, (train2, val2) = split(3, "b")
    _, (train3, val3) = split(4, "c")
    assert read(r1.paths["train"]).equals(read(tmp_path / "b" / "train.parquet"))
    assert (train1, val1) == (train2, val2)
    assert val1 != val3
    assert len(val1) == 5 and len(train1) == 10 and not train1 & val1
    assert train1 | val1 == train3 | val3 == {p for p, _ in EN + CN}


def test_strip_instruction_tolerates_wrapper_variants(tmp_path):
    variants = [
        PRE + "{p}" + SUF,
        PRE.replace("\n\n", "\n") + "{p}" + SUF.replace("\n\n", " "),
        PRE.replace(". The last", ".  The last").lower() + "{p}" + SUF.replace('"Answer:".', "“Answer:”"),
        "  " + PRE + "{p}" + SUF + "\n",
    ]
    rows = []
    for i, v in enumerate(variants):
        row = raw_row(None, str(i), i)
        row["prompt"][0]["content"] = v.format(p=f"Problem {i}: find $x$.")
        rows.append(row)
    # a second copy of problem 0 with another wrapper variant is a duplicate, not a new problem
    dup = raw_row(None, "0", 99)
    dup["prompt"][0]["content"] = variants[1].format(p="Problem 0: find $x$.")
    src = write_parquet(tmp_path / "v.parquet", rows + [dup])

    report = prepare_dapo_math(src, tmp_path / "s", val_size=0, strip_instruction=True)
    contents = [p[0]["content"] for p in read(report.paths["train"])["prompt"].to_pylist()]
    assert contents == [f"Problem {i}: find $x$." for i in range(4)]
    assert report.duplicates_removed == 1

    kept = prepare_dapo_math(src, tmp_path / "k", val_size=0)
    contents = [p[0]["content"] for p in read(kept.paths["train"])["prompt"].to_pylist()]
    assert contents[0] == (PRE + "Problem 0: find $x$." + SUF).strip()
    assert all("Remember to put your answer" in c for c in contents)


def test_processed_format_parquet_and_solution_fallback(tmp_path):
    rows = [processed_row(p, a, i) for i, (p, a) in enumerate(EN + CN)]
    rows[0]["reward_model"] = None  # the answer then comes from `solution`
    rows.append({**processed_row("empty solution", "", 50)})
    src = write_parquet(tmp_path / "proc.parquet", rows)
    report = prepare_dapo_math(src, tmp_path / "out", val_size=3, strip_instruction=True)
    assert report.input_format == "processed"
    assert (report.rows_read, report.unique_prompts, report.bad) == (16, 15, {"empty_answer": 1})
    table = pa.concat_tables([read(report.paths["train"]), read(report.paths["val"])])
    answers = {
        p[0]["content"]: r["ground_truth"]
        for p, r in zip(table["prompt"].to_pylist(), table["reward_model"].to_pylist())
    }
    assert answers == dict(EN + CN)
    originals = sorted(e["original_index"] for e in table["extra_info"].to_pylist())
    assert originals == sorted(str(i) for i in range(15))


def test_language_filter(tmp_path):
    src = write_parquet(tmp_path / "raw.parquet", raw_rows())
    results = {}
    for lang in ("all", "en", "cn"):
        r = prepare_dapo_math(src, tmp_path / lang, val_size=1, language=lang, strip_instruction=True)
        table = pa.concat_tables([read(r.paths["train"]), read(r.paths["val"])])
        results[lang] = (
            r.language_filtered,
            {p[0]["content"] for p in table["prompt"].to_pylist()},
            {e["language"] for e in table["extra_info"].to_pylist()},
        )
    assert results["all"] == (0, {p for p, _ in EN + CN}, {"en", "cn"})
    assert results["en"] == (3, {p for p, _ in EN}, {"en"})
    assert results["cn"] == (12, {p for p, _ in CN}, {"cn"})
    with pytest.raises(UsageError, match="unknown language"):
        prepare_dapo_math(src, tmp_path / "x", language="fr")


def test_jsonl_with_wrong_types_counts_each_kind(tmp_path):
    rows = raw_rows()
    rows += [
        {**raw_row("int prompt", "1", 400), "prompt": 5},
        {**raw_row("list of strings", "1", 401), "prompt": ["hello"]},
        {**raw_row("non-string content", "1", 402), "prompt": [{"role": "user", "content": 7}]},
        {**raw_row("system only", "1", 403), "prompt": [{"role": "system", "content": "be brief"}]},
        raw_row("list answer", [1], 404),
        raw_row("float answer", 1.5, 405),
        raw_row("bool answer", True, 406),
        {**raw_row("string reward model", "1", 407), "reward_model": "1"},
        raw_row("An integer answer", 42, 408),  # an int ground truth is fine: it becomes "42"
    ]
    src = write_jsonl(tmp_path / "mixed.jsonl", rows, extra_lines=["{not json", "[1, 2]", ""])
    report = prepare_dapo_math(src, tmp_path / "out", val_size=0, strip_instruction=True)
    assert report.rows_read == 48 + 9 + 2  # the blank line is not a row
    assert report.bad == {
        "invalid_json": 2,
        "missing_prompt": 1,
        "wrong_type_prompt": 2 + 1,
        "empty_prompt": 2 + 1,
        "missing_answer": 2,
        "wrong_type_answer": 4,
        "empty_answer": 1,
        "conflicting_answer": 3,
    }
    assert report.unique_prompts == 16
    answers = {
        p[0]["content"]: r["ground_truth"]
        for p, r in zip(
            read(report.paths["train"])["prompt"].to_pylist(),
            read(report.paths["train"])["reward_model"].to_pylist(),
        )
    }
    assert answers["An integer answer"] == "42"


def test_parquet_jsonl_and_batching_agree(tmp_path, monkeypatch):
    rows = raw_rows()
    a = prepare_dapo_math(write_parquet(tmp_path / "r.parquet", rows), tmp_path / "a", val_size=3, seed=2)
    b = prepare_dapo_math(write_jsonl(tmp_path / "r.jsonl", rows), tmp_path / "b", val_size=3, seed=2)
    monkeypatch.setattr(dapo_math, "BATCH_ROWS", 5)  # many batches, merged every 2: same answer
    monkeypatch.setattr(dapo_math._Reducer, "MERGE_EVERY", 2)
    c = prepare_dapo_math(tmp_path / "r.parquet", tmp_path / "c", val_size=3, seed=2)
    d = prepare_dapo_math(
        write_jsonl(tmp_path / "m.jsonl", rows, ["{broken"]), tmp_path / "d", val_size=3, seed=2
    )
    for r in (b, c, d):
        assert read(r.paths["train"]).equals(read(a.paths["train"]))
        assert read(r.paths["val"]).equals(read(a.paths["val"]))
    assert b.bad == c.bad == a.bad == RAW_BAD
    assert d.bad == {"invalid_json": 1, **RAW_BAD}
    assert a.duplicates_removed == b.duplicates_removed == c.duplicates_removed == d.duplicates_removed == 24


def test_wrong_typed_parquet_columns(tmp_path):
    base = [raw_row(p, a, i) for i, (p, a) in enumerate(EN)]
    ints = [
        {**r, "reward_model": {"ground_truth": int(r["reward_model"]["ground_truth"]), "style": "rule"}}
        for r in base
    ]
    report = prepare_dapo_math(write_parquet(tmp_path / "i.parquet", ints), tmp_path / "i", val_size=2)
    assert report.bad == {} and report.unique_prompts == 12
    assert (
        read(report.paths["val"]).schema.field("reward_model").type.field("ground_truth").type == pa.string()
    )

    floats = [{**r, "reward_model": {"ground_truth": 1.5, "style": "rule"}} for r in base]
    src = write_parquet(tmp_path / "f.parquet", floats)
    with pytest.raises(DataError, match="no usable problems"):
        prepare_dapo_math(src, tmp_path / "f", val_size=2)
    with pytest.raises(DataError, match="wrong_type_answer=12"):
        prepare_dapo_math(src, tmp_path / "f", val_size=2, strict=True)


def test_strict_refuses_bad_rows_and_writes_nothing(tmp_path):
    src = write_parquet(tmp_path / "raw.parquet", raw_rows())
    with pytest.raises(DataError) as e:
        prepare_dapo_math(src, tmp_path / "out", strict=True, val_size=2)
    assert "9 bad rows" in e.value.message
    assert "missing_prompt=1" in e.value.message and "conflicting_answer=3" in e.value.message
    assert "without --strict" in e.value.hint
    assert not (tmp_path / "out").exists()
    clean = write_parquet(tmp_path / "clean.parquet", [raw_row(p, a, i) for i, (p, a) in enumerate(EN)])
    assert prepare_dapo_math(clean, tmp_path / "ok", strict=True, val_size=2).train_rows == 10


def test_input_errors(tmp_path):
    with pytest.raises(DataError, match="input file not found"):
        prepare_dapo_math(tmp_path / "missing.parquet", tmp_path / "out")
    other = write_parquet(tmp_path / "other.parquet", [{"question": "q", "answer": "1"}])
    with pytest.raises(DataError, match="does not look like DAPO-Math: columns are answer, question"):
        prepare_dapo_math(other, tmp_path / "out")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match="cannot read"):
        prepare_dapo_math(tmp_path / "junk.parquet", tmp_path / "out")
    src = write_parquet(tmp_path / "raw.parquet", raw_rows())
    with pytest.raises(DataError, match="leaves no training problems"):
        prepare_dapo_math(src, tmp_path / "out", val_size=15)
    with pytest.raises(DataError, match="no cn problems"):
        prepare_dapo_math(
            write_parquet(tmp_path / "en.parquet", [raw_row("p", "1", 0)]), tmp_path / "o", language="cn"
        )
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        prepare_dapo_math(src, tmp_path / "file", val_size=1)


def test_outputs_are_replaced_atomically_and_progress_is_reported(tmp_path):
    src = write_parquet(tmp_path / "raw.parquet", raw_rows())
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.parquet").write_text("stale")
    stages = []
    report = prepare_dapo_math(src, out, val_size=2, progress=lambda stage, done, total: stages.append(stage))
    assert read(out / "train.parquet").num_rows == report.train_rows == 13
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet", "val.parquet"]  # no temp files left
    assert list(dict.fromkeys(stages)) == ["reading", "deduplicating", "writing"]


def test_cli_prepare_summary_and_exit_codes(tmp_path):
    runner = CliRunner()
    src = write_jsonl(tmp_path / "raw.jsonl", raw_rows())
    ok = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "dapo-math",
            "--input",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--val-size",
            "3",
            "--language",
            "en",
            "--strip-instruction",
        ],
    )
    assert ok.exit_code == 0, ok.output
    lines = {" ".join(line.strip("│ ").split()) for line in ok.stdout.splitlines()}
    for expected in (
        "rows read │ 48",
        "bad: missing prompt │ 1",
        "bad: empty prompt │ 2",
        "bad: missing answer │ 2",
        "bad: conflicting answer │ 3",
        "duplicates removed │ 24",
        "unique problems │ 15",
        "not en (dropped) │ 3",
        "train rows │ 9",
        "val rows │ 3",
    ):
        assert expected in lines, (expected, ok.stdout)
    assert "archer train --preset math" in ok.stdout
    assert read(tmp_path / "out" / "val.parquet").num_rows == 3

    missing = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "dapo-math",
            "--input",
            str(tmp_path / "nope.parquet"),
            "--out",
            str(tmp_path / "o2"),
        ],
    )
    assert missing.exit_code == 1
    assert "input file not found" in missing.output and "Traceback" not in missing.output

    strict = runner.invoke(
        app, ["data", "prepare", "dapo-math", "--input", str(src), "--out", str(tmp_path / "o3"), "--strict"]
    )
    assert strict.exit_code == 1 and "9 bad rows" in strict.output and not (tmp_path / "o3").exists()

    bad_lang = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "dapo-math",
            "--input",
            str(src),
            "--out",
            str(tmp_path / "o4"),
            "--language",
            "fr",
        ],
    )
    assert bad_lang.exit_code == 2
    no_input = runner.invoke(app, ["data", "prepare", "dapo-math", "--out", str(tmp_path / "o5")])
    assert no_input.exit_code == 2 and "--input" in no_input.output


def test_cli_help_has_examples():
    runner = CliRunner()
    for args, needle in (
        (["data", "-h"], "synth"),
        (["data", "prepare", "dapo-math", "-h"], "archer train --preset math"),
        (["data", "synth", "arithmetic", "-h"], "archer train --preset quickstart"),
    ):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0 and needle in result.output
