"""load_prompts: parquet and jsonl, dotted answer keys, and errors that say what the file holds."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archer.core.data.loading import PromptRecord, load_prompts
from archer.core.data.synth import write_arithmetic
from archer.errors import DataError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_reads_the_synth_files(tmp_path):
    paths = write_arithmetic(tmp_path, n=30, val_n=5, seed=0)["paths"]
    records = load_prompts([str(paths["train"]), str(paths["val"])])
    assert len(records) == 35
    first = records[0]
    assert isinstance(first, PromptRecord)
    assert first.prompt[0]["role"] == "user" and first.prompt[0]["content"].endswith("=")
    assert first.data_source == "arithmetic" and first.index == 0
    table = pq.read_table(paths["train"])
    assert [r.answer for r in records[:30]] == [g["ground_truth"] for g in table["reward_model"].to_pylist()]
    assert [r.prompt for r in records[:30]] == table["prompt"].to_pylist()
    assert [r.index for r in records[30:]] == [0, 1, 2, 3, 4]  # the val file's own indices


def test_jsonl_with_string_prompts_and_custom_keys(tmp_path):
    path = _jsonl(
        tmp_path / "qa.jsonl",
        [{"question": "1+1?", "answer": 2, "data_source": "toy"}, {"question": "2+2?", "answer": "4"}],
    )
    records = load_prompts([path], prompt_key="question", answer_key="answer")
    assert records == [
        PromptRecord(prompt="1+1?", answer="2", data_source="toy", index=0),
        PromptRecord(prompt="2+2?", answer="4", data_source="qa", index=1),  # data_source: the file stem
    ]


def test_dotted_answer_key_reaches_into_structs_and_dicts(tmp_path):
    rows = [{"prompt": "p0", "meta": {"gold": {"value": "7"}}, "extra_info": {"index": 41}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "n.parquet")
    _jsonl(tmp_path / "n.jsonl", rows)
    for name in ("n.parquet", "n.jsonl"):
        [rec] = load_prompts([str(tmp_path / name)], answer_key="meta.gold.value")
        assert (rec.prompt, rec.answer, rec.index) == ("p0", "7", 41)
    # a column literally named with a dot wins over struct traversal
    pq.write_table(pa.table({"prompt": ["p"], "a.b": ["lit"]}), tmp_path / "lit.parquet")
    assert load_prompts([str(tmp_path / "lit.parquet")], answer_key="a.b")[0].answer == "lit"


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        load_prompts([str(tmp_path / "nope.parquet")])
    assert e.value.hint and e.value.exit_code == 1
    with pytest.raises(DataError, match="not a file"):
        load_prompts([str(tmp_path)])
    (tmp_path / "junk.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="cannot read .*junk.parquet"):
        load_prompts([str(tmp_path / "junk.parquet")])
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "reward_model": {"ground_truth": "1"}}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompts([str(tmp_path / "bad.jsonl")])
    with pytest.raises(DataError, match="no data files"):
        load_prompts([])


def test_missing_columns_name_the_existing_ones(tmp_path):
    pq.write_table(pa.table({"question": ["q"], "solution": ["1"]}), tmp_path / "q.parquet")
    with pytest.raises(DataError) as e:
        load_prompts([str(tmp_path / "q.parquet")])
    assert "'prompt'" in e.value.message and "question, solution" in e.value.message
    assert "data.prompt_key" in e.value.hint
    with pytest.raises(DataError) as e:
        load_prompts([str(tmp_path / "q.parquet")], prompt_key="question")
    assert "'reward_model.ground_truth'" in e.value.message and "data.answer_key" in e.value.hint
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "q", "solution": "1"}])
    with pytest.raises(DataError, match="question, solution"):
        load_prompts([path], prompt_key="question")
    assert load_prompts([path], prompt_key="question", answer_key="solution")[0].answer == "1"


def test_rows_without_usable_answers_are_reported(tmp_path):
    path = _jsonl(
        tmp_path / "gaps.jsonl",
        [
            {"prompt": "ok", "reward_model": {"ground_truth": "1"}},
            {"prompt": "no answer", "reward_model": {}},
            {"prompt": "", "reward_model": {"ground_truth": "1"}},
            {"prompt": "float answer", "reward_model": {"ground_truth": 1.5}},
        ],
    )
    with pytest.raises(DataError) as e:
        load_prompts([path])
    assert "3 of 4 rows" in e.value.message and "rows 1, 2, 3" in e.value.message
    assert "archer data prepare" in e.value.hint
