"""Every bad input is one red line and a hint, with exit 2 (usage/config) or 1 (runtime)
(issue 17, item 6). Each case gave `unexpected error: <Type>` or was silently accepted on main."""

from __future__ import annotations

import pytest
from small_run import SMALL_PRESET, SMALL_RUN
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.config import compose
from archer.errors import ConfigError

TINY = [
    *SMALL_RUN,
    "rollout.val.max_prompts=8",
    "trainer.total_steps=1",
    "trainer.val_before_train=false",
]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_error(r, code: int, *needles: str) -> str:
    """The command exited `code` with exactly one 'Error:' line holding every needle, and a hint."""
    assert r.exit_code == code, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    assert "unexpected error" not in r.output and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in errors[0], r.output
    assert "Hint:" in r.output, r.output
    return errors[0]


# ---------------------------------------------------------------------------- overrides and presets
def test_an_unbalanced_bracket_in_an_override_is_one_line():
    line = one_error(
        invoke("train", "--preset", "quickstart", "--dry-run", "rollout.n=[1,2"), 2, "rollout.n=[1,2"
    )
    assert "expected ',' or ']'" in line


def test_a_non_utf8_preset_is_named_with_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"extends: quickstart\n# caf\xe9\n")
    one_error(invoke("train", "--preset", str(bad), "--dry-run"), 2, "not UTF-8", "line 2", "0xe9")


@pytest.mark.parametrize("betas", ["[0.9]", "[1.5,0.9]", "[0.9,0.999,0.5]", "[-0.1,0.9]"])
def test_bad_adam_betas_fail_at_compose_time(betas):
    with pytest.raises(ConfigError, match="actor.optim.betas"):
        compose("quickstart", [f"actor.optim.betas={betas}"])
    one_error(
        invoke("train", "--preset", "quickstart", "--dry-run", f"actor.optim.betas={betas}"), 2, "betas"
    )


def test_tilde_with_a_value_is_an_error_not_a_silent_drop():
    one_error(invoke("train", "--preset", "quickstart", "--dry-run", "~seed=5"), 2, "~seed=5")
    assert compose("quickstart", ["~seed"]).cfg.seed == 0  # ~key alone still drops the value


def test_a_key_given_twice_in_a_preset_is_an_error(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("extends: quickstart\nseed: 1\nrollout:\n  n: 4\nseed: 2\n")
    one_error(invoke("train", "--preset", str(dup), "--dry-run"), 2, "'seed' is given twice", "lines 2 and 5")
    nested = tmp_path / "nested.yaml"
    nested.write_text("extends: quickstart\nrollout:\n  n: 4\n  n: 8\n")
    one_error(invoke("presets", "validate", str(nested)), 2, "'n' is given twice")


def test_presets_cp_to_an_unwritable_place(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_error(invoke("presets", "cp", "quickstart", str(afile / "x.yaml")), 2, "is not a directory")
    one_error(
        invoke("presets", "cp", "quickstart", "/proc/archer-test.yaml"),
        2,
        "cannot write /proc/archer-test.yaml",
    )


# ---------------------------------------------------------------------------- output folders
def test_out_at_a_file_under_a_file_or_unwritable(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["train", "--preset", SMALL_PRESET, *TINY]
    one_error(invoke(*base, "--out", str(afile)), 2, "is a file, not a directory")
    one_error(invoke(*base, "--out", str(afile / "run")), 2, f"under a file ({afile})")
    one_error(
        invoke(*base, "--out", "/sys/archer-test-run"), 2, "--out /sys/archer-test-run cannot be written"
    )
    assert afile.read_text() == "x"


@pytest.mark.parametrize("key", ["trace.dir", "trainer.cache_dir"])
def test_unwritable_trace_or_cache_dir_is_said_before_set_up(tmp_path, key):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = tmp_path / "run"
    base = ["train", "--preset", SMALL_PRESET, "--out", str(out), *TINY]
    one_error(invoke(*base, f"{key}={afile / 'sub'}"), 2, key, "under a file")
    one_error(invoke(*base, f"{key}=/proc/archer-test/x"), 2, key, "cannot be written")
    assert not (out / "config.yaml").exists()  # nothing of the run was written


def test_a_failed_set_up_does_not_refuse_the_fixed_rerun(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    base = ["train", "--preset", SMALL_PRESET, "--out", str(out), *TINY, f"trainer.cache_dir={cache}"]
    one_error(invoke(*base, f"data.train_files={tmp_path / 'missing.parquet'}"), 1, "missing.parquet")
    assert (out / "config.yaml").exists()  # the failed start wrote its config
    r = invoke(*base)  # the fixed command
    assert r.exit_code == 0, r.output
    assert "stopped before its first step" in r.output
    text = (out / "config.yaml").read_text()
    assert "missing.parquet" not in text
    # a run that did train is still protected
    one_error(invoke(*base), 2, "already holds a run")


def test_replacing_a_failed_start_removes_only_what_archer_wrote(tmp_path):
    """The replacement removes only what archer writes: another file in --out stays."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.yaml").write_text("seed: 0\n")
    (out / "run.json").write_text("{}\n")
    from archer.core.run import check_new_run_dir

    assert check_new_run_dir(out, resume=False) == ["config.yaml", "run.json"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------- damaged runs and traces
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 2-step run with its trace (made once for the module)."""
    root = tmp_path_factory.mktemp("trained")
    out = root / "run"
    r = invoke(
        "train",
        "--preset",
        SMALL_PRESET,
        "--out",
        str(out),
        *TINY,
        "trainer.total_steps=2",
        f"trainer.cache_dir={root / 'c'}",
    )
    assert r.exit_code == 0, r.output
    return out


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "warmup"))
    return dst


def test_a_foreign_parquet_in_the_manifest_is_named_everywhere(trained_run, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from archer.core.trace import TraceReader
    from archer.errors import TraceError
    from archer.view.model.trace_data import TraceData

    run = copy_run(trained_run, tmp_path / "run")
    pq.write_table(pa.table({"a": [1, 2, 3]}), run / "trace" / "steps" / "step_000003.parquet")
    with open(run / "trace" / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "file": "steps/step_000003.parquet"}) + "\n")
    r = invoke("collect", str(run))  # the table is still made; the trace's problem is a warning
    assert r.exit_code == 0, r.output
    assert "not an archer trace step" in r.output and "KeyError" not in r.output
    one_error(
        invoke("trace", "export", str(run), "--step", "3", "--out", str(tmp_path / "x.jsonl")),
        1,
        "step_000003.parquet",
        "not an archer trace step",
    )
    assert not (tmp_path / "x.jsonl").exists()
    one_error(invoke("trace", "info", str(run)), 1, "not an archer trace step")
    with pytest.raises(TraceError, match="not an archer trace step"):
        TraceData(run / "trace").step_table(3)  # what the viewer's step worker calls
    assert TraceReader(run).read_step(2).num_rows == 16  # the run's own steps still read


def test_collect_does_not_call_a_run_with_a_deleted_manifest_finished(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    (run / "trace" / "manifest.jsonl").unlink()
    r = invoke("collect", str(run))
    assert r.exit_code == 0, r.output
    assert "incomplete" in r.output and "trace manifest missing" in r.output


# ---------------------------------------------------------------------------- data files
def write_jsonl(path, rows, *, corrupt_line: int | None = None):
    import json

    lines = [json.dumps(r).encode() for r in rows]
    if corrupt_line is not None:
        lines[corrupt_line] = lines[corrupt_line].replace(b"What", b"Wh\xffat")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_invalid_utf8_in_a_jsonl_fails_data_prepare_strict(tmp_path):
    import pyarrow.parquet as pq

    rows = [{"prompt": f"What is {i}+1?", "solution": str(i + 1)} for i in range(40)]
    src = write_jsonl(tmp_path / "bad.jsonl", rows, corrupt_line=3)
    base = ["data", "prepare", "dapo-math", "-i", str(src), "--val-size", "4"]
    one_error(invoke(*base, "--out", str(tmp_path / "strict"), "--strict"), 1, "1 bad rows", "invalid_json=1")
    assert not (tmp_path / "strict" / "train.parquet").exists()
    r = invoke(*base, "--out", str(tmp_path / "lenient"))  # without --strict the row is dropped and counted
    assert r.exit_code == 0, r.output
    kept = (
        pq.read_table(tmp_path / "lenient" / "train.parquet").to_pylist()
        + pq.read_table(tmp_path / "lenient" / "val.parquet").to_pylist()
    )  # every value decodes: nothing invalid reached the parquet
    assert len(kept) == 39


def test_training_on_a_parquet_with_invalid_utf8_is_a_data_error(tmp_path):
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    from archer.core.data.loading import load_prompts
    from archer.errors import DataError

    rows = [{"prompt": f"What is {i}+1?", "answer": str(i + 1)} for i in range(4)]
    table = pj.read_json(write_jsonl(tmp_path / "bad.jsonl", rows, corrupt_line=1))  # pyarrow does not check
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_prompts([str(tmp_path / "bad.parquet")], answer_key="answer")


def test_integer_prompts_read_the_same_from_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": 1000 + i if i % 2 else f"What is {i}?", "solution": str(i)} for i in range(40)]
    src = write_jsonl(tmp_path / "mixed.jsonl", rows)  # types disagree: read line by line
    r = invoke(
        "data",
        "prepare",
        "dapo-math",
        "-i",
        str(src),
        "--out",
        str(tmp_path / "j"),
        "--strict",
        "--val-size",
        "4",
    )
    assert r.exit_code == 0, r.output
    ints = [r for r in rows if isinstance(r["prompt"], int)]
    pq.write_table(pa.Table.from_pylist(ints), tmp_path / "ints.parquet")
    r = invoke(
        "data",
        "prepare",
        "dapo-math",
        "-i",
        str(tmp_path / "ints.parquet"),
        "--out",
        str(tmp_path / "p"),
        "--strict",
        "--val-size",
        "4",
    )
    assert r.exit_code == 0, r.output

    def problems(folder):
        t = pa.concat_tables([pq.read_table(folder / "train.parquet"), pq.read_table(folder / "val.parquet")])
        return {m[0]["content"] for m in t.column("prompt").to_pylist()}

    from_jsonl, from_parquet = problems(tmp_path / "j"), problems(tmp_path / "p")
    assert len(from_jsonl) == 40 and from_parquet == {str(r["prompt"]) for r in ints} <= from_jsonl
