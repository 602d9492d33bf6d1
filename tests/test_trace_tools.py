"""`archer trace info|export|import-npz`: outputs, exit codes, and the restricted unpickler."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from view.tracegen import (
    OLD_TEXTS,
    PROMPTS,
    STEP1,
    STEP2,
    char_ids,
    entropy_for,
    influence_for,
    old_step,
    poison_prompt_ids,
    save_char_tokenizer,
    stored_influence_for,
    write_old_npz_trace,
    write_trace,
)

from archer.cli.main import app
from archer.core.trace import SCHEMA_VERSION, TraceReader
from archer.core.trace.export import RESPONSE_EXPORT_COLUMNS, RESPONSE_TEXT_COLUMNS, TOKEN_EXPORT_COLUMNS
from archer.core.trace.npz_import import load_npz
from archer.errors import TraceError

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return save_char_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tok) -> Path:
    run = tmp_path_factory.mktemp("run") / "run"
    write_trace(run / "trace", tokenizer_dir=tok)
    return run


@pytest.fixture()
def old(tmp_path) -> Path:
    return write_old_npz_trace(tmp_path / "old")


# ---------------------------------------------------------------------------------- info


def test_info_text_and_json(run):
    r = invoke("trace", "info", str(run))
    assert r.exit_code == 0, r.output
    for words in (
        "schema",
        f"v{SCHEMA_VERSION} (archer-trace)",
        "4 (1..4)",
        "24  (with influence: 8)",
        "3,071",
        "20: step, row, uid",
        "summary.json",
        "fixture",
    ):
        assert words in r.output
    r = invoke("trace", "info", str(run / "trace"), "--json")
    d = json.loads(r.output)
    assert (d["steps"], d["first_step"], d["last_step"]) == (4, 1, 4)
    assert d["responses"] == 24 and d["influence_rows"] == 8 and d["tokens"] == 3071
    assert [c["name"] for c in d["columns"]][:3] == ["step", "row", "uid"]
    types = {c["name"]: c["type"] for c in d["columns"]}
    assert "halffloat" in types["entropy"] and types["influence"] == "list<element: float>"  # as read
    stored = {c["name"]: c["stored"] for c in d["columns"]}
    assert stored["influence"].startswith("list<element: halffloat> of score / 2^e")  # as kept (v2)
    assert stored["influence_sum"] == "not stored: computed from influence when read"
    assert d["bytes_total"] >= d["bytes_steps"] > 0
    assert d["summary"]["preset"] == "fixture" and d["schema_version"] == SCHEMA_VERSION


def test_info_errors_exit_1_with_a_hint(tmp_path):
    r = invoke("trace", "info", str(tmp_path / "nope"))
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "summary.json").write_text(json.dumps({"format": "archer-trace", "schema_version": 7}))
    (tmp_path / "t" / "manifest.jsonl").write_text("")
    r = invoke("trace", "info", str(tmp_path / "t"))
    assert r.exit_code == 1 and "schema v7" in r.output and "upgrade archer" in r.output


def test_trace_group_help_has_examples():
    r = invoke("trace", "-h")
    assert r.exit_code == 0 and "import-npz" in r.output and "Examples" in r.output


# ---------------------------------------------------------------------------------- export


def test_export_responses_csv_to_stdout(run):
    r = invoke("trace", "export", str(run), "--step", "2")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == list(RESPONSE_EXPORT_COLUMNS + RESPONSE_TEXT_COLUMNS)
    # decoded with the run's own tokenizer (summary.json's tokenizer_path), no --tokenizer given
    assert [x["response_text"] for x in rows] == STEP2  # newlines kept (CSV-quoted), "" for 0 tokens
    assert [x["prompt_text"] for x in rows] == [PROMPTS["p0"]] * 4 + [PROMPTS["p1"]] * 4
    assert [int(x["row"]) for x in rows] == list(range(8))
    assert [float(x["reward"]) for x in rows] == [1, 0, 1, 0, 1, 1, 0, 0]
    assert rows[7]["accepted"] == "" and rows[7]["entropy_mean"] == ""  # unknown / NaN -> empty
    assert rows[0]["uid"] == "p0" and rows[0]["correct"] == "True"


def test_export_tokens_jsonl_to_file_with_text(run, tok, tmp_path):
    out = tmp_path / "tokens.jsonl"
    r = invoke(
        "trace",
        "export",
        str(run),
        "--step",
        "2",
        "--tokens",
        "--format",
        "jsonl",
        "--out",
        str(out),
        "--tokenizer",
        str(tok),
    )
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == sum(len(t) for t in STEP2)
    assert list(recs[0]) == list(TOKEN_EXPORT_COLUMNS)
    row3 = [x for x in recs if x["row"] == 3]
    assert "".join(x["text"] for x in row3) == STEP2[3]
    assert [x["token_id"] for x in row3] == char_ids(STEP2[3])
    inf = influence_for(5, 3)
    # as the trace keeps them (float16 under the step's scale), within 2^-11 of the scores
    kept = stored_influence_for(5, 3)
    assert [x["influence"] for x in row3] == [
        None if math.isnan(v) else pytest.approx(float(v)) for v in kept
    ]
    assert [x["influence"] for x in row3] == [
        None if math.isnan(v) else pytest.approx(float(v), rel=2.0**-11) for v in inf
    ]
    assert row3[1]["entropy"] == pytest.approx(float(np.float16(entropy_for(5, 3, 2)[1])), rel=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically
    r = invoke("trace", "export", str(run), "--step", "1", "--tokens")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))  # the run's tokenizer, found without --tokenizer
    assert "".join(x["text"] for x in rows if x["row"] == "1") == STEP1[1]
    assert rows[0]["influence"] == ""  # step 1 has no influence
    r = invoke("trace", "export", str(run), "--step", "1", "--tokens", "--no-decode")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert r.exit_code == 0 and rows[0]["text"] == "" and "text columns" not in r.output


def test_export_without_a_tokenizer_leaves_text_empty_and_says_why(tmp_path, tok):
    """A trace whose run recorded no tokenizer (and has no <run>/tokenizer): ids and numbers are
    exported, the text columns are empty, and one warning names the flag; --tokenizer fills them."""
    trace = write_trace(tmp_path / "bare" / "trace")
    r = invoke("trace", "export", str(trace), "--step", "2", "--format", "jsonl")
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(recs) == 8 and all(x["prompt_text"] is None and x["response_text"] is None for x in recs)
    assert "text columns left empty" in r.stderr and "--tokenizer DIR" in r.stderr
    r = invoke("trace", "export", str(trace), "--step", "2", "--format", "jsonl", "--tokenizer", str(tok))
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["response_text"] for x in recs] == STEP2 and recs[4]["prompt_text"] == PROMPTS["p1"]


def test_export_errors(run, tmp_path):
    r = invoke("trace", "export", str(run), "--step", "9")
    assert r.exit_code == 1 and "step 9 is not in the trace" in r.output and "steps 1..4" in r.output
    r = invoke("trace", "export", str(run), "--step", "2", "--format", "xml")
    assert r.exit_code == 2
    r = invoke("trace", "export", str(run), "--step", "2", "--out", str(tmp_path / "no" / "x.csv"))
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("trace", "export", str(run), "--step", "2", "--tokenizer", str(tmp_path / "nope"))
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("trace", "export", str(run), "--step", "2", "--tokenizer", str(tmp_path), "--no-decode")
    assert r.exit_code == 2 and "exclude each other" in r.output
    r = invoke("trace", "export", str(run), "--step", "4")
    assert r.exit_code == 0 and r.stdout.strip() == ",".join(
        RESPONSE_EXPORT_COLUMNS + RESPONSE_TEXT_COLUMNS
    )  # empty step: header only


# ---------------------------------------------------------------------------------- import-npz


def test_import_npz_merges_entropy_and_influence(old, tmp_path, tok):
    new = tmp_path / "new" / "trace"
    r = invoke("trace", "import-npz", str(old), str(new), "--tokenizer", str(tok))
    assert r.exit_code == 0, r.output
    assert "Converted 2 steps (entropy_trace v2, influence_trace v1)" in r.output
    assert "8 responses, 6 with influence" in r.output

    reader = TraceReader(new)
    assert reader.steps() == [1, 2]
    assert reader.summary["tokenizer_path"] == str(tok.resolve())
    assert reader.summary["imported_formats"] == {"entropy_trace": 2, "influence_trace": 1}
    for step in (1, 2):
        t = reader.read_step(step)
        ent_arrays, inf_arrays = old_step(step, equal_prompts=step % 2 == 0)
        assert t.num_rows == 4
        assert t.column("response_ids").to_pylist() == [char_ids(x) for x in OLD_TEXTS]  # padding (=EOS) gone
        assert t.column("response_length").to_pylist() == [len(x) for x in OLD_TEXTS]
        for i, text in enumerate(OLD_TEXTS):
            np.testing.assert_array_equal(
                np.asarray(t.column("entropy")[i].as_py(), dtype=np.float16),
                ent_arrays["entropies"][i, : len(text)],
            )
        assert t.column("uid").to_pylist() == ["a", "a", "b", "b"]
        assert t.column("group_index").to_pylist() == [0, 0, 1, 1]
        assert t.column("sample_index").to_pylist() == [0, 1, 0, 1]
        assert t.column("source_row").to_pylist() == [0, 1, 2, 3]
        assert t.column("dataset_index").to_pylist() == [10, 10, 11, 11]  # the old pickled sample_index
        infl = t.column("influence").to_pylist()
        assert infl[1] is None  # entropy-only row: influence not computed
        for k, row in enumerate((0, 2, 3)):  # influence rows matched by selected_row_id
            want = inf_arrays["influence"][k, : len(OLD_TEXTS[row])].astype(np.float32)
            got = np.array(infl[row], dtype=np.float32)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # NaN inside the mask kept
            np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)])
        assert t.column("reward").to_pylist()[0] == 1.0 and math.isnan(t.column("reward").to_pylist()[1])
        assert t.column("accepted").to_pylist() == [True, None, False, True]
        prompts = t.column("prompt_ids").to_pylist()
        assert prompts[0] == prompts[1] == char_ids("1+2")  # row 1 takes its group's prompt
        assert prompts[3] == (char_ids("1+2") if step % 2 == 0 else char_ids("3+40"))


def test_import_npz_influence_only_and_no_manifest(tmp_path):
    old = write_old_npz_trace(tmp_path / "old", steps=(3,))
    import shutil

    shutil.rmtree(old / "entropy_trace")
    (old / "influence_trace" / "manifest.jsonl").unlink()
    r = invoke("trace", "import-npz", str(old), str(tmp_path / "new"))
    assert r.exit_code == 0, r.output
    assert "manifest.jsonl is missing" in r.output
    t = TraceReader(tmp_path / "new").read_step(3)
    assert t.column("source_row").to_pylist() == [0, 2, 3]  # only the influence rows exist
    assert t.column("row").to_pylist() == [0, 1, 2]


def test_import_npz_refuses_unknown_versions_and_nonempty_targets(old, tmp_path):
    s = json.loads((old / "entropy_trace" / "summary.json").read_text())
    s["format_version"] = 3
    (old / "entropy_trace" / "summary.json").write_text(json.dumps(s))
    r = invoke("trace", "import-npz", str(old), str(tmp_path / "new"))
    assert r.exit_code == 1 and "format_version 3" in r.output and "entropy_trace" in r.output
    s["format_version"] = 1
    (old / "entropy_trace" / "summary.json").write_text(json.dumps(s))
    assert invoke("trace", "import-npz", str(old), str(tmp_path / "new")).exit_code == 0
    r = invoke("trace", "import-npz", str(old), str(tmp_path / "new"))
    assert r.exit_code == 1 and "already holds steps" in r.output
    r = invoke("trace", "import-npz", str(tmp_path / "new"), str(tmp_path / "other"))
    assert r.exit_code == 1 and "holds no old trace" in r.output


def test_restricted_unpickler_refuses_code_execution(old, tmp_path):
    marker = tmp_path / "pwned"
    path = poison_prompt_ids(old, 2, marker)
    with pytest.raises(TraceError) as e:
        load_npz(path)
    msg = e.value.message
    assert str(path) in msg and "'prompt_ids'" in msg and "system" in msg and "refused" in msg
    r = invoke("trace", "import-npz", str(old), str(tmp_path / "new"))
    assert r.exit_code == 1 and "refused" in r.output and "prompt_ids" in r.output
    assert not marker.exists()  # nothing ran
    # the same file's plain arrays still load, and object arrays of plain lists are admitted
    ok = load_npz(old / "influence_trace" / "steps" / "step_000001.npz")
    assert ok["prompt_ids"].dtype == object and ok["prompt_ids"][1] == char_ids("3+40")


def test_corrupt_npz_is_a_trace_error(old, tmp_path):
    f = old / "entropy_trace" / "steps" / "step_000001.npz"
    f.write_bytes(f.read_bytes()[:100])
    r = invoke("trace", "import-npz", str(old), str(tmp_path / "new"))
    assert r.exit_code == 1 and "step_000001.npz" in r.output and "Traceback" not in r.output


def test_info_and_export_are_headless_they_import_neither_the_viewer_nor_textual(run, tok):
    """Trace statistics, export records and decoding live in archer.core.trace (issue 13 item 5)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from archer.cli.main import app\n"
        "r = CliRunner()\n"
        f"assert r.invoke(app, ['trace', 'info', {str(run)!r}]).exit_code == 0\n"
        f"assert r.invoke(app, ['trace', 'export', {str(run)!r}, '--step', '2']).exit_code == 0\n"
        f"x = r.invoke(app, ['trace', 'export', {str(run)!r}, '--step', '2', '--tokens',"
        f" '--tokenizer', {str(tok)!r}])\n"
        "assert x.exit_code == 0, x.output\n"
        "print(sorted(m for m in sys.modules if m.startswith(('archer.view', 'textual'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
