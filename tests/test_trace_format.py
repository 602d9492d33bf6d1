"""The trace format: schema v3 round trip (v1 and v2 files still read), summaries, parquet layout, writer
protocol, reader errors."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archer.core.trace import (
    COLUMNS,
    LIST_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    TraceReader,
    TraceWriter,
    build_step_table,
    list_entropy,
    list_influence,
    list_row,
    list_values,
    row_dict,
)
from archer.core.trace import writer as writer_mod
from archer.errors import TraceError

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def make_inputs(step: int, n: int = 12, seed: int = 0, max_len: int = 40, influence: bool = True) -> dict:
    """Random but reproducible arguments for build_step_table (groups of 4)."""
    rng = np.random.default_rng([step, seed])
    lengths = rng.integers(0, max_len, n)
    lengths[0] = max_len  # at least one long one
    infl = None
    if influence:
        infl = []
        for i, L in enumerate(lengths):
            if i % 3 == 0:
                infl.append(None)
            else:
                x = rng.normal(0, 1e-3, L).astype(np.float32)
                x[rng.random(L) < 0.25] = np.nan
                infl.append(x)
    return dict(
        uid=[f"s{step}-g{i // 4}" for i in range(n)],
        group_index=np.arange(n) // 4,
        sample_index=np.arange(n) % 4,
        prompt_ids=[list(range(100 + i // 4, 110 + i // 4)) for i in range(n)],
        response_ids=[rng.integers(0, 150_000, L).astype(np.int64) for L in lengths],
        entropy=[(rng.random(L) * 12).astype(np.float32) for L in lengths],
        reward=rng.random(n),
        advantage=rng.normal(size=n),
        truncated=rng.random(n) < 0.2,
        correct=[None if i % 5 == 0 else bool(i % 2) for i in range(n)],
        accepted=rng.random(n) < 0.5,
        influence=infl,
        data_source=["gsm8k" if i % 2 else "math" for i in range(n)],
    )


def make_table(step: int, **kw) -> pa.Table:
    return build_step_table(step, **make_inputs(step, **kw))


def write_steps(trace_dir: Path, steps, **writer_kw) -> None:
    with TraceWriter(trace_dir, {"model": "tiny"}, **writer_kw) as w:
        for s in steps:
            w.submit(s, make_table(s))


def step_max(influence) -> float:
    """The step's largest finite |score| (what the v2 scale is chosen from)."""
    vals = np.concatenate([np.abs(x[np.isfinite(x)]) for x in influence if x is not None])
    return float(vals.max())


def assert_stored_close(stored, original, m: float) -> None:
    """The storage error of schema v2: relative <= 2^-11 for |score| >= 2^-29·m (float16's normal
    range under the step's scale), absolute <= 2^-39·m below; NaN where the input has NaN."""
    stored = np.asarray(stored, dtype=np.float64)
    original = np.asarray(original, dtype=np.float32).astype(np.float64)
    assert np.array_equal(np.isnan(stored), np.isnan(original))
    ok = ~np.isnan(original)
    err = np.abs(stored[ok] - original[ok])
    assert np.all(err <= np.maximum(2.0**-11 * np.abs(original[ok]), 2.0**-39 * m))


def manifest_steps(trace_dir: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (trace_dir / "manifest.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# schema and round trip
# ---------------------------------------------------------------------------------------------


def test_round_trip_every_column_and_dtype(tmp_path):
    inp = make_inputs(7)
    role = pa.array(
        [np.full(len(r), i % 3, dtype=np.int8) for i, r in enumerate(inp["response_ids"])],
        type=pa.list_(pa.int8()),
    )
    table = build_step_table(7, **inp, extra={"token_role": role})
    write_steps_dir = tmp_path / "trace"
    with TraceWriter(write_steps_dir, {"model": "tiny"}) as w:
        w.submit(7, table)

    back = TraceReader(write_steps_dir).read_step(7)
    assert back.column_names == list(COLUMNS) + ["token_role"]
    for field in SCHEMA:
        assert back.schema.field(field.name).type == field.type, field.name
    assert back.schema.field("token_role").type == pa.list_(pa.int8())
    meta = back.schema.metadata
    assert meta[b"archer.schema_version"] == str(SCHEMA_VERSION).encode()
    assert meta[b"archer.step"] == b"7"

    n = len(inp["uid"])
    assert back.num_rows == n
    assert back.column("step").to_pylist() == [7] * n
    assert back.column("row").to_pylist() == list(range(n))
    assert back.column("uid").to_pylist() == inp["uid"]
    assert back.column("group_index").to_pylist() == list(inp["group_index"])
    assert back.column("sample_index").to_pylist() == list(inp["sample_index"])
    assert back.column("data_source").to_pylist() == inp["data_source"]
    np.testing.assert_array_equal(back.column("reward").to_numpy(), inp["reward"].astype(np.float32))
    np.testing.assert_array_equal(back.column("advantage").to_numpy(), inp["advantage"].astype(np.float32))
    assert back.column("truncated").to_pylist() == list(inp["truncated"])
    assert back.column("correct").to_pylist() == inp["correct"]
    assert back.column("accepted").to_pylist() == list(inp["accepted"])
    assert back.column("response_length").to_pylist() == [len(r) for r in inp["response_ids"]]
    for i in range(n):
        np.testing.assert_array_equal(list_row(back, "prompt_ids", i), inp["prompt_ids"][i])
        np.testing.assert_array_equal(list_row(back, "response_ids", i), inp["response_ids"][i])
        ent = list_row(back, "entropy", i)
        assert ent.dtype == np.float16
        np.testing.assert_array_equal(ent, inp["entropy"][i].astype(np.float16))
        infl = list_influence(back, i)
        if inp["influence"][i] is None:
            assert infl is None
        else:
            # the table in memory holds what the file holds, bit for bit (NaN == NaN here) ...
            np.testing.assert_array_equal(infl, list_influence(table, i))
            # ... the input rounded to float16's 11 bits (one power-of-two scale per step)
            assert_stored_close(infl, inp["influence"][i], step_max(inp["influence"]))
        role_i = np.full(len(inp["response_ids"][i]), i % 3)
        np.testing.assert_array_equal(list_row(back, "token_role", i), role_i)


def test_summary_columns_are_nan_aware_and_null_when_nothing_captured():
    nan = np.nan
    t = build_step_table(
        1,
        uid=["a", "a", "a", "a"],
        group_index=[0, 0, 0, 0],
        sample_index=[0, 1, 2, 3],
        prompt_ids=[[1], [1], [1], [1]],
        response_ids=[np.array([5, 6, 7]), np.array([5, 6]), np.array([], dtype=np.int32), np.array([9])],
        entropy=[np.array([1.0, 2.0, 3.0]), np.array([0.5, nan]), np.array([]), np.array([4.0])],
        influence=[np.array([1.0, nan, 3.0]), np.array([nan, nan]), np.array([]), None],
        reward=[1, 0, 0, 1],
        advantage=[0, 0, 0, 0],
        truncated=[False] * 4,
    )
    assert t.column("entropy_mean").to_pylist()[:2] == [2.0, 0.5]
    assert t.column("entropy_max").to_pylist()[:2] == [3.0, 0.5]
    assert t.column("entropy_mean").to_pylist()[3] == 4.0
    assert math.isnan(t.column("entropy_mean")[2].as_py())  # no tokens
    assert math.isnan(t.column("entropy_max")[2].as_py())
    assert t.column("influence_sum").to_pylist() == [4.0, None, None, None]
    assert t.column("influence_mean").to_pylist() == [2.0, None, None, None]
    # a computed-but-empty influence list is not the same as "not computed"
    assert t.column("influence").is_null().to_pylist() == [False, False, False, True]
    # no influence at all
    t2 = build_step_table(
        1,
        uid=["a"],
        group_index=[0],
        sample_index=[0],
        prompt_ids=[[1]],
        response_ids=[np.array([3])],
        entropy=[np.array([0.25])],
        reward=[0.0],
        advantage=[0.0],
        truncated=[True],
    )
    assert t2.column("influence").null_count == 1
    assert t2.column("influence_sum").to_pylist() == [None]
    assert t2.column("correct").to_pylist() == [None]
    assert t2.column("accepted").to_pylist() == [None]
    assert t2.column("data_source").to_pylist() == [None]


def test_summary_columns_match_a_per_row_numpy_computation():
    inp = make_inputs(3, n=30, max_len=200)
    t = build_step_table(3, **inp)
    for i in range(30):
        e = inp["entropy"][i].astype(np.float16).astype(np.float64)
        if len(e):
            assert t.column("entropy_mean")[i].as_py() == pytest.approx(e.mean(), rel=1e-6)
            assert t.column("entropy_max")[i].as_py() == pytest.approx(e.max(), rel=1e-6)
        x = inp["influence"][i]
        if x is not None and np.isfinite(x).any():
            # from the stored scores (float16 of score / 2^e, as the file keeps them), as for entropy
            x64 = list_influence(t, i).astype(np.float64)
            assert t.column("influence_sum")[i].as_py() == pytest.approx(np.nansum(x64), rel=1e-6)
            assert t.column("influence_mean")[i].as_py() == pytest.approx(np.nanmean(x64), rel=1e-6)
            # and the input's within the rounding: |sum of errors| <= 2^-11 · sum |x|
            bound = 2.0**-11 * np.nansum(np.abs(x.astype(np.float64)))
            err = abs(t.column("influence_sum")[i].as_py() - np.nansum(x.astype(np.float64)))
            assert err <= bound * 1.001
        else:
            assert t.column("influence_sum")[i].as_py() is None


def test_float16_entropy_precision(tmp_path):
    rng = np.random.default_rng(1)
    ent = [rng.random(4096).astype(np.float32) * 12 for _ in range(4)]
    ent[0][:5] = [0.0, 1e-5, 6.1e-5, 11.999, 12.0]
    t = build_step_table(
        1,
        uid=["u"] * 4,
        group_index=[0] * 4,
        sample_index=range(4),
        prompt_ids=[[1]] * 4,
        response_ids=[np.zeros(4096, np.int32)] * 4,
        entropy=ent,
        reward=np.zeros(4),
        advantage=np.zeros(4),
        truncated=np.zeros(4, bool),
    )
    write_dir = tmp_path / "t"
    with TraceWriter(write_dir, {}) as w:
        w.submit(1, t)
    back = TraceReader(write_dir).read_step(1, columns=["entropy"])
    for i in range(4):
        got = list_entropy(back, i)
        assert got.dtype == np.float32
        err = np.abs(got - ent[i])
        assert err.max() <= 0.004  # half a float16 ulp at 8..16 nats is 2**-9 = 0.00195; bound from the docs
        assert np.all(err <= np.maximum(np.abs(ent[i]) * 2.0**-11, 2.0**-25))
    assert list_entropy(back, 0)[0] == 0.0


def test_build_step_table_rejects_mismatched_lengths():
    inp = make_inputs(1, n=5)
    too_long = np.zeros(len(inp["response_ids"][3]) + 1)
    bad = dict(inp, entropy=[*inp["entropy"][:3], too_long, inp["entropy"][4]])
    with pytest.raises(ValueError, match="entropy of response 3"):
        build_step_table(1, **bad)
    bad = dict(inp, influence=[None, None, np.zeros(len(inp["response_ids"][2]) + 2), None, None])
    with pytest.raises(ValueError, match="influence of response 2"):
        build_step_table(1, **bad)
    with pytest.raises(ValueError, match="reward has shape"):
        build_step_table(1, **dict(inp, reward=[0.0, 1.0]))
    with pytest.raises(ValueError, match="response_ids has 4 entries"):
        build_step_table(1, **dict(inp, response_ids=inp["response_ids"][:4]))
    with pytest.raises(ValueError, match="extra column 'x' has 2 entries"):
        build_step_table(1, **inp, extra={"x": pa.array([1, 2])})
    with pytest.raises(ValueError, match="clashes"):
        build_step_table(1, **inp, extra={"reward": pa.array(range(5))})
    with pytest.raises(ValueError, match="uid"):
        build_step_table(1, **dict(inp, uid=["a", None, "b", "c", "d"]))


def test_nullable_bool_accepts_nan_as_unknown():
    inp = make_inputs(1, n=3)
    t = build_step_table(1, **dict(inp, correct=np.array([1.0, np.nan, 0.0])))
    assert t.column("correct").to_pylist() == [True, None, False]


def test_empty_step_round_trips(tmp_path):
    t = build_step_table(
        1,
        uid=[],
        group_index=[],
        sample_index=[],
        prompt_ids=[],
        response_ids=[],
        entropy=[],
        reward=[],
        advantage=[],
        truncated=[],
    )
    with TraceWriter(tmp_path, {}) as w:
        w.submit(1, t)
    r = TraceReader(tmp_path)
    assert r.num_rows(1) == 0
    info = r.step_info(1)
    assert info["n_responses"] == 0 and info["reward_mean"] is None and info["entropy_mean"] is None


# ---------------------------------------------------------------------------------------------
# parquet layout
# ---------------------------------------------------------------------------------------------


def test_row_groups_have_the_configured_size(tmp_path):
    with TraceWriter(tmp_path, {}, row_group_size=16) as w:
        w.submit(1, make_table(1, n=40))
    md = pq.ParquetFile(tmp_path / "steps" / "step_000001.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [16, 16, 8]


def test_no_dictionary_encoding_on_list_columns_and_statistics_on(tmp_path):
    with TraceWriter(tmp_path, {}, row_group_size=8) as w:
        w.submit(1, make_table(1, n=20))
    md = pq.ParquetFile(tmp_path / "steps" / "step_000001.parquet").metadata
    dict_encodings = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    seen = set()
    for rg in range(md.num_row_groups):
        for j in range(md.num_columns):
            col = md.row_group(rg).column(j)
            top = col.path_in_schema.split(".")[0]
            seen.add(top)
            if top in LIST_COLUMNS:
                assert not dict_encodings & set(col.encodings), (top, col.encodings)
            if top == "uid":
                assert dict_encodings & set(col.encodings)
            if top in ("step", "row", "reward"):
                assert col.statistics is not None and col.statistics.has_min_max
            assert col.compression == "ZSTD"
    assert set(LIST_COLUMNS) <= seen


def test_step_files_are_readable_by_plain_pyarrow_glob(tmp_path):
    write_steps(tmp_path, [1, 2, 3])
    ds = pq.read_table(tmp_path / "steps", columns=["step", "reward"])
    assert sorted(set(ds.column("step").to_pylist())) == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# writer protocol
# ---------------------------------------------------------------------------------------------


def test_directory_layout_and_manifest_aggregates(tmp_path):
    inp = make_inputs(1, n=12)
    with TraceWriter(tmp_path, {"model": "m", "tokenizer": "t", "preset": "p", "git_commit": "abc"}) as w:
        w.submit(1, build_step_table(1, **inp))
    assert (tmp_path / "latest_step.txt").read_text().strip() == "1"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["format"] == "archer-trace" and summary["schema_version"] == SCHEMA_VERSION
    assert summary["model"] == "m" and summary["archer_version"] and summary["created"] and summary["updated"]
    (line,) = (tmp_path / "manifest.jsonl").read_text().splitlines()
    e = json.loads(line)
    assert e["step"] == 1 and e["file"] == "steps/step_000001.parquet"
    assert e["bytes"] == (tmp_path / e["file"]).stat().st_size
    assert e["n_responses"] == 12
    assert e["n_tokens"] == sum(len(r) for r in inp["response_ids"])
    assert e["reward_mean"] == pytest.approx(inp["reward"].astype(np.float32).mean(), abs=1e-6)
    known = [c for c in inp["correct"] if c is not None]
    assert e["accuracy"] == pytest.approx(sum(known) / len(known), abs=1e-6)
    all_ent = np.concatenate(inp["entropy"]).astype(np.float16).astype(np.float64)
    assert e["entropy_mean"] == pytest.approx(all_ent.mean(), abs=1e-5)  # token-weighted
    assert e["influence_rows"] == sum(x is not None for x in inp["influence"])
    assert e["write_seconds"] >= 0 and e["written_at"]
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["step_000001.parquet"]


def test_manifest_accuracy_is_null_when_correct_unknown(tmp_path):
    with TraceWriter(tmp_path, {}) as w:
        w.submit(1, build_step_table(1, **dict(make_inputs(1), correct=None, influence=None)))
    e = TraceReader(tmp_path).step_info(1)
    assert e["accuracy"] is None and e["influence_rows"] == 0


def test_write_every_skips_steps_but_always_writes_the_first(tmp_path):
    with TraceWriter(tmp_path, {}, write_every=3) as w:
        written = [s for s in range(1, 11) if w.submit(s, make_table(s, n=2))]
        assert [w.should_write(s) for s in (1, 2, 3, 4)] == [True, False, True, False]
    assert written == [1, 3, 6, 9]
    assert manifest_steps(tmp_path) == [1, 3, 6, 9]
    assert TraceReader(tmp_path).steps() == [1, 3, 6, 9]
    st = w.stats()
    assert st.steps_written == 4 and st.steps_skipped == 6 and st.last_step == 9 and st.pending == 0
    assert st.bytes_written == sum(p.stat().st_size for p in (tmp_path / "steps").iterdir())


def test_submit_validates_steps_and_tables(tmp_path):
    with TraceWriter(tmp_path, {}) as w:
        w.submit(2, make_table(2, n=2))
        with pytest.raises(ValueError, match="steps must increase"):
            w.submit(2, make_table(2, n=2))
        with pytest.raises(ValueError, match="built for step 4"):
            w.submit(5, make_table(4, n=2))
        with pytest.raises(ValueError, match="missing columns"):
            w.submit(6, pa.table({"step": pa.array([6], pa.int32())}))
        with pytest.raises(ValueError, match="type"):
            w.submit(6, make_table(6, n=2).set_column(10, "reward", pa.array([1.0, 2.0], pa.float64())))
    assert manifest_steps(tmp_path) == [2]


def test_background_write_failure_surfaces_as_trace_error(tmp_path, monkeypatch):
    calls = []

    def boom(*a, **kw):
        calls.append(1)
        raise OSError(28, "No space left on device")

    w = TraceWriter(tmp_path, {}, max_queue=1)
    w.submit(1, make_table(1, n=2))
    w.flush()
    monkeypatch.setattr(writer_mod.pq, "write_table", boom)
    w.submit(2, make_table(2, n=2))  # accepted: the failure happens later, on the thread
    with pytest.raises(TraceError, match=r"no space left on the device writing .*step_000002\.parquet") as ei:
        w.flush()
    assert isinstance(ei.value.__cause__, OSError)
    with pytest.raises(TraceError):
        w.submit(3, make_table(3, n=2))  # the writer stays failed
    w.close()  # already reported: close does not raise it a second time
    assert manifest_steps(tmp_path) == [1]
    assert (tmp_path / "latest_step.txt").read_text().strip() == "1"
    assert calls == [1]


def test_unreported_failure_is_raised_by_close(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod.pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError("EIO")))
    w = TraceWriter(tmp_path, {})
    w.submit(1, make_table(1, n=2))
    with pytest.raises(TraceError, match="EIO"):
        w.close()


def test_failure_does_not_deadlock_a_producer_blocked_on_a_full_queue(tmp_path, monkeypatch):
    gate = threading.Event()

    def slow_fail(*a, **kw):
        gate.wait(5)
        raise OSError("EIO")

    monkeypatch.setattr(writer_mod.pq, "write_table", slow_fail)
    w = TraceWriter(tmp_path, {}, max_queue=1)
    w.submit(1, make_table(1, n=2))  # taken by the thread, which blocks in write_table
    errors = []

    def producer():
        try:
            for s in range(2, 6):
                w.submit(s, make_table(s, n=2))
        except TraceError as e:
            errors.append(e)

    t = threading.Thread(target=producer)
    t.start()
    gate.set()
    t.join(10)
    assert not t.is_alive()
    assert errors
    with pytest.raises(TraceError):
        w.flush()
    w.close()


def test_fresh_writer_refuses_a_directory_with_steps(tmp_path):
    write_steps(tmp_path, [1])
    with pytest.raises(TraceError, match="already holds steps"):
        TraceWriter(tmp_path, {})


def test_fsync_mode_writes_the_same_trace(tmp_path):
    write_steps(tmp_path, [1, 2], fsync=True)
    assert TraceReader(tmp_path).steps() == [1, 2]


def test_context_manager_does_not_mask_the_exception_in_flight(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod.pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError("EIO")))
    with pytest.raises(KeyError):
        with TraceWriter(tmp_path, {}) as w:
            w.submit(1, make_table(1, n=2))
            raise KeyError("training failed")


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------


def test_resume_repairs_a_killed_run(tmp_path):
    write_steps(tmp_path, [1, 2, 3, 4, 5])
    created = json.loads((tmp_path / "summary.json").read_text())["created"]
    # what a kill leaves behind: a partial manifest line, temp files, a step file past the manifest
    with open(tmp_path / "manifest.jsonl", "a") as f:
        f.write('{"step": 6, "file": "steps/step_0')
    (tmp_path / "steps" / ".step_000006.parquet.tmp-4242").write_bytes(b"PAR1 half")
    (tmp_path / ".latest_step.txt.tmp.4242").write_text("6")
    (tmp_path / "steps" / "step_000007.parquet").write_bytes(b"orphan")

    r = TraceReader(tmp_path)
    assert r.steps() == [1, 2, 3, 4, 5]  # the partial line is ignored by readers
    assert not r.warnings

    w = TraceWriter(tmp_path, {"model": "tiny", "note": "resumed"}, resume_after_step=3)
    assert manifest_steps(tmp_path) == [1, 2, 3]
    assert (tmp_path / "manifest.jsonl").read_text().endswith("\n")
    assert (tmp_path / "latest_step.txt").read_text().strip() == "3"
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == [
        "step_000001.parquet",
        "step_000002.parquet",
        "step_000003.parquet",
    ]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    with pytest.raises(ValueError, match="steps must increase"):
        w.submit(3, make_table(3))
    for s in (4, 5, 6):
        w.submit(s, make_table(s, seed=1))
    w.close()

    assert manifest_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    r = TraceReader(tmp_path)
    assert r.steps() == [1, 2, 3, 4, 5, 6]
    # the re-written step 4 is the new one (seed=1), not the old file
    assert r.read_step(4).column("reward").to_pylist() == make_table(4, seed=1).column("reward").to_pylist()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["created"] == created and summary["note"] == "resumed" and summary["model"] == "tiny"
    assert summary["resumes"][-1]["after_step"] == 3


def test_resume_drops_manifest_lines_whose_file_is_gone_and_keeps_earlier_steps(tmp_path):
    write_steps(tmp_path, [1, 2, 3])
    (tmp_path / "steps" / "step_000002.parquet").unlink()  # e.g. lost without fsync
    with TraceWriter(tmp_path, {}, resume_after_step=10) as w:
        assert w.stats().last_step == 3
        w.submit(11, make_table(11))
    assert manifest_steps(tmp_path) == [1, 3, 11]


def test_resume_on_an_empty_directory_starts_fresh(tmp_path):
    with TraceWriter(tmp_path / "new", {"model": "m"}, resume_after_step=4) as w:
        w.submit(5, make_table(5))
    assert manifest_steps(tmp_path / "new") == [5]


def test_resume_after_zero_clears_everything(tmp_path):
    write_steps(tmp_path, [1, 2])
    with TraceWriter(tmp_path, {}, resume_after_step=0):
        assert not (tmp_path / "latest_step.txt").exists()
        assert manifest_steps(tmp_path) == []
        assert list((tmp_path / "steps").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------


def test_reader_accepts_run_dir_or_trace_dir_and_explains_missing_ones(tmp_path):
    write_steps(tmp_path / "run" / "trace", [1])
    assert TraceReader(tmp_path / "run").steps() == [1]
    assert TraceReader(tmp_path / "run" / "trace").steps() == [1]
    assert TraceReader(tmp_path / "run").summary["model"] == "tiny"
    with pytest.raises(TraceError, match="does not exist") as ei:
        TraceReader(tmp_path / "nope")
    assert ei.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match="holds no trace") as ei:
        TraceReader(tmp_path / "empty")
    assert "trace.enable" in ei.value.hint
    (tmp_path / "nomanifest" / "trace").mkdir(parents=True)
    (tmp_path / "nomanifest" / "trace" / "summary.json").write_text("{}")
    with pytest.raises(TraceError, match="no manifest.jsonl"):
        TraceReader(tmp_path / "nomanifest")


def test_live_trace_with_no_steps_yet_reads_as_empty(tmp_path):
    w = TraceWriter(tmp_path, {})
    r = TraceReader(tmp_path)
    assert r.steps() == [] and r.manifest() == [] and r.latest_step() is None
    w.submit(1, make_table(1))
    w.flush()
    assert r.steps() == [1] and r.latest_step() == 1  # the reader follows the live manifest
    w.close()
    with pytest.raises(TraceError, match="step 9 is not in the trace"):
        r.step_info(9)


def test_column_selection_and_overview(tmp_path):
    write_steps(tmp_path, [1])
    r = TraceReader(tmp_path)
    t = r.read_step(1, columns=["reward", "entropy"])
    assert t.column_names == ["reward", "entropy"]
    ov = r.step_overview(1)
    assert ov.column_names == list(SUMMARY_COLUMNS)
    assert not set(LIST_COLUMNS) & set(ov.column_names)
    assert ov.column("reward").equals(r.read_step(1).column("reward"))
    assert r.num_rows(1) == 12
    with pytest.raises(ValueError, match="unknown trace column"):
        r.read_step(1, columns=["nope"])


def test_read_response_equals_the_row_of_read_step(tmp_path):
    with TraceWriter(tmp_path, {}, row_group_size=5) as w:
        w.submit(1, make_table(1, n=23))
    r = TraceReader(tmp_path)
    full = r.read_step(1)
    for row in range(23):
        got = r.read_response(1, row)
        want = row_dict(full, row)
        assert got.keys() == want.keys() == set(COLUMNS)
        for k, v in want.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(got[k], v)
            elif isinstance(v, float) and math.isnan(v):
                assert math.isnan(got[k])
            else:
                assert got[k] == v, k
        # and row_dict agrees with pyarrow's own conversion
        py = full.slice(row, 1).to_pylist()[0]
        assert got["uid"] == py["uid"] and list(got["response_ids"]) == py["response_ids"]
    part = r.read_response(1, 17, columns=["row", "entropy"])
    assert set(part) == {"row", "entropy"} and part["row"] == 17
    with pytest.raises(IndexError):
        r.read_response(1, 23)


def test_list_helpers_respect_slices_and_chunks():
    t = make_table(1, n=10)
    values, offsets = list_values(t.column("response_ids").slice(3, 4))
    assert len(offsets) == 5
    for k in range(4):
        np.testing.assert_array_equal(values[offsets[k] : offsets[k + 1]], list_row(t, "response_ids", 3 + k))
    two_chunks = pa.concat_tables([t.slice(0, 4), t.slice(4)])
    assert two_chunks.column("entropy").num_chunks == 2
    for row in range(10):
        np.testing.assert_array_equal(list_entropy(two_chunks, row), list_entropy(t, row))
        a, b = list_influence(two_chunks, row), list_influence(t, row)
        assert (a is None) == (b is None)


def test_truncated_manifest_line_and_missing_file_do_not_crash_the_reader(tmp_path):
    write_steps(tmp_path, [1, 2, 3])
    (tmp_path / "steps" / "step_000002.parquet").unlink()
    with open(tmp_path / "manifest.jsonl", "a") as f:
        f.write('{"step": 4, "fi')
    r = TraceReader(tmp_path)
    assert r.steps() == [1, 3]
    assert any("step 2" in w and "missing" in w for w in r.warnings)
    assert [e["step"] for e in r.manifest()] == [1, 2, 3]
    with pytest.raises(TraceError, match="step_000002.parquet"):
        r.read_step(2)


def test_unknown_schema_version_is_refused(tmp_path):
    write_steps(tmp_path, [1])
    s = json.loads((tmp_path / "summary.json").read_text())
    s["schema_version"] = SCHEMA_VERSION + 98
    (tmp_path / "summary.json").write_text(json.dumps(s))
    with pytest.raises(TraceError, match=rf"v{SCHEMA_VERSION + 98}.*v{SCHEMA_VERSION}"):
        TraceReader(tmp_path)

    other = tmp_path / "other"
    write_steps(other, [1])
    path = other / "steps" / "step_000001.parquet"
    t = pq.read_table(path)
    meta = dict(t.schema.metadata)
    meta[b"archer.schema_version"] = b"7"
    pq.write_table(t.replace_schema_metadata(meta), path)
    r = TraceReader(other)
    with pytest.raises(TraceError, match=rf"step_000001.parquet uses trace schema v7.*v{SCHEMA_VERSION}"):
        r.read_step(1)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bitflip"])
def test_corrupt_step_file_raises_trace_error_naming_the_file(tmp_path, damage):
    write_steps(tmp_path, [1])
    path = tmp_path / "steps" / "step_000001.parquet"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not parquet at all" * 10)
    else:  # footer intact, a few bytes of every data page flipped: page checksums must catch it
        md = pq.ParquetFile(path).metadata
        for j in range(md.num_columns):
            col = md.row_group(0).column(j)
            mid = col.data_page_offset + col.total_compressed_size // 2
            for k in range(mid, mid + 4):
                data[k] ^= 0xFF
        path.write_bytes(data)
    r = TraceReader(tmp_path)
    assert r.steps() == [1]  # the file exists; reading it is what fails
    calls = [lambda: r.read_step(1), lambda: r.read_response(1, 0), lambda: r.step_overview(1)]
    if damage != "bitflip":  # the footer is intact then, and num_rows reads only the footer
        calls.append(lambda: r.num_rows(1))
    for call in calls:
        with pytest.raises(TraceError, match="step_000001.parquet") as ei:
            call()
        assert ei.value.hint


def test_corrupt_summary_is_a_trace_error(tmp_path):
    write_steps(tmp_path, [1])
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(TraceError, match="summary.json"):
        TraceReader(tmp_path)


def test_trace_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, archer.core.trace; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert out.stdout.strip() == "False"


def test_writer_from_trace_config(tmp_path):
    from archer.core.config.schema import TraceConfig

    cfg = TraceConfig(write_every=2, row_group_size=4, compression_level=5, max_queue=1)
    with TraceWriter.from_config(cfg, tmp_path / "run", {"model": "m"}) as w:
        assert (w.dir, w.write_every, w.row_group_size, w.compression_level) == (
            tmp_path / "run" / "trace",
            2,
            4,
            5,
        )
        for s in (1, 2, 3):
            w.submit(s, make_table(s, n=9))
    assert TraceReader(tmp_path / "run").steps() == [1, 2]
    md = pq.ParquetFile(tmp_path / "run" / "trace" / "steps" / "step_000002.parquet").metadata
    assert md.num_row_groups == 3
    other = TraceConfig(dir=str(tmp_path / "elsewhere"))
    with TraceWriter.from_config(other, tmp_path / "run2", {}, resume_after_step=0) as w:
        assert w.dir == tmp_path / "elsewhere"


# ---------------------------------------------------------------------------------------------
# schema v2 storage (float16 influence, one scale per step, derived summaries) and v1 files
# ---------------------------------------------------------------------------------------------

V1_TRACE = Path(__file__).resolve().parent / "data" / "trace_v1"


def test_v2_stores_float16_influence_scaled_per_step_and_derives_the_summaries(tmp_path):
    """On disk: list<float16> of score / 2^e with e in the footer, no influence_sum/_mean; read
    back: float32 scores within float16 rounding of the input, for responses whose scores differ
    by 10 orders of magnitude, and the summaries equal to the ones of the table in memory."""
    from archer.core.trace.codec import DERIVED_COLUMNS, META_INFLUENCE_SCALE

    inp = make_inputs(5, n=16, max_len=64)
    rng = np.random.default_rng(5)
    infl = []
    for i, r in enumerate(inp["response_ids"]):
        v = rng.standard_normal(len(r)).astype(np.float32) * np.float32(10.0 ** (-12 + 2.5 * (i % 5)))
        v[rng.random(len(r)) < 0.2] = np.nan
        infl.append(None if i % 4 == 0 else v)
    inp["influence"] = infl
    table = build_step_table(5, **inp)
    with TraceWriter(tmp_path, {}) as w:
        w.submit(5, table)
    path = tmp_path / "steps" / "step_000005.parquet"
    disk = pq.read_table(path)
    assert disk.schema.field("influence").type == pa.list_(pa.float16())
    assert not set(DERIVED_COLUMNS) & set(disk.column_names)
    e = int(disk.schema.metadata[META_INFLUENCE_SCALE])
    m = step_max(infl)
    assert 2.0**14 < m / 2.0**e <= 2.0**15

    r = TraceReader(tmp_path)
    back = r.read_step(5)
    assert back.column_names == list(COLUMNS)
    assert back.schema.field("influence").type == pa.list_(pa.float32())
    assert META_INFLUENCE_SCALE not in back.schema.metadata
    for i in range(len(infl)):
        got = list_influence(back, i)
        if infl[i] is None:
            assert got is None
            continue
        np.testing.assert_array_equal(got, list_influence(table, i))
        assert_stored_close(got, infl[i], m)
        # what DuckDB or plain pyarrow gets: the stored value times 2^e
        raw = np.asarray(disk.column("influence")[i].as_py(), dtype=np.float64) * 2.0**e
        np.testing.assert_array_equal(raw, got.astype(np.float64))
    for name in DERIVED_COLUMNS:
        assert back.column(name).equals(table.column(name)), name
        assert r.step_overview(5).column(name).equals(table.column(name)), name
    assert r.read_step(5, columns=["influence_mean"]).column_names == ["influence_mean"]
    only = r.read_step(5, columns=["influence_sum"])
    assert only.column("influence_sum").equals(table.column("influence_sum"))
    one = r.read_response(5, 9, columns=["influence_sum", "reward"])
    assert one["influence_sum"] == table.column("influence_sum")[9].as_py()
    assert set(one) == {"influence_sum", "reward"}


def test_storage_rounding_is_stable_when_a_read_table_is_written_again(tmp_path):
    """A decoded table written again holds the same scores, also when rounding moved the step's
    largest score onto a power of two (the scale's exponent then drops by one: an exact doubling)."""
    from archer.core.trace.codec import round_influence, scale_exponent

    # 2^14·(1 + 2^-12) rounds down to 2^14 in float16 (spacing 2^-10 there): the rounded max is a
    # power of two, one binade lower than the exponent the raw max asked for
    raw = np.array([2.0**14 * (1 + 2.0**-12), -3.0, 1e-3, np.nan], dtype=np.float32) * np.float32(2.0**-30)
    once = round_influence(raw)
    assert scale_exponent(once) == scale_exponent(raw) - 1
    # NaN (not captured) and an infinite score stay what they are; the scale ignores both
    odd = np.array([np.nan, -np.inf, 3.0, -1.0], dtype=np.float32)
    assert scale_exponent(odd) == 2 - 15  # 3 is in (2^1, 2^2]
    np.testing.assert_array_equal(round_influence(odd), odd)
    assert scale_exponent(np.array([np.nan], np.float32)) == scale_exponent(np.zeros(0, np.float32)) == 0
    np.testing.assert_array_equal(round_influence(once), once)
    inp = make_inputs(2)
    inp["influence"] = [None if x is None else np.resize(raw, len(x)) for x in inp["influence"]]
    table = build_step_table(2, **inp)
    with TraceWriter(tmp_path / "a", {}) as w:
        w.submit(2, table)
    first = TraceReader(tmp_path / "a").read_step(2)
    with TraceWriter(tmp_path / "b", {}) as w:
        w.submit(2, first)
    second = TraceReader(tmp_path / "b").read_step(2)
    for i in range(first.num_rows):
        a, b = list_influence(first, i), list_influence(second, i)
        assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)
    assert second.column("influence_sum").equals(first.column("influence_sum"))


def test_a_v1_trace_written_by_the_old_writer_reads_as_before(tmp_path):
    """tests/data/trace_v1: two steps written by archer's schema-v1 writer (main 09b82a9, from
    make_table(1) and make_table(2)): float32 influence and stored summaries, read unchanged; a
    v2 writer resuming it adds a v2 step, and all three read alike."""
    import shutil

    from archer.core.trace.codec import describe_columns

    trace = tmp_path / "t"
    shutil.copytree(V1_TRACE, trace)
    r = TraceReader(trace)
    assert r.schema_version == 1 and r.steps() == [1, 2]
    for step in (1, 2):
        assert r.schema(step).field("influence").type == pa.list_(pa.float32())
        assert r.schema(step).metadata[b"archer.schema_version"] == b"1"
        inp = make_inputs(step)
        back = r.read_step(step)
        assert back.column_names == list(COLUMNS)
        for i, x in enumerate(inp["influence"]):
            got = list_influence(back, i)
            if x is None:
                assert got is None and back.column("influence_sum")[i].as_py() is None
            else:  # float32 as it was computed: exact
                np.testing.assert_array_equal(got, x)
                want = np.nansum(x.astype(np.float64)) if np.isfinite(x).any() else None
                assert back.column("influence_sum")[i].as_py() == (want and pytest.approx(want, rel=1e-6))
        overview = r.step_overview(step)
        assert overview.column_names == list(SUMMARY_COLUMNS)
        assert overview.column("influence_mean").equals(back.column("influence_mean"))
        one = r.read_response(step, 1, columns=["influence", "influence_mean"])
        np.testing.assert_array_equal(one["influence"], inp["influence"][1])
    assert [c["stored"] for c in describe_columns(r.schema(2)) if c["name"] == "influence_sum"] == ["float"]

    with TraceWriter(trace, {"model": "tiny"}, resume_after_step=2) as w:
        w.submit(3, make_table(3))
    r = TraceReader(trace)
    assert r.steps() == [1, 2, 3] and r.schema_version == SCHEMA_VERSION
    assert r.schema(3).field("influence").type == pa.list_(pa.float16())
    assert r.read_step(1).schema == r.read_step(3).schema  # the same logical table (metadata aside)
    for step in (1, 2, 3):
        assert r.step_overview(step).column_names == list(SUMMARY_COLUMNS)
    assert [c["stored"] for c in describe_columns(r.schema(3)) if c["name"] == "influence_sum"] == [
        "not stored: computed from influence when read"
    ]


def test_v2_keeps_the_summaries_of_long_responses_so_a_response_list_reads_no_token_column(tmp_path):
    """Steps whose responses average >= 64 tokens store influence_sum/_mean (8 B per response is
    then under 1/8 B per token); shorter ones derive them. Both read back the same numbers."""
    from archer.core.trace.codec import DERIVED_COLUMNS, KEEP_SUMMARIES_MEAN_TOKENS, columns_to_read

    short = make_table(1, n=12, max_len=40)  # about 20 tokens per response
    inp = make_inputs(2, n=12, max_len=300)
    inp["response_ids"] = [
        np.resize(r, max(len(r), 2 * KEEP_SUMMARIES_MEAN_TOKENS)) for r in inp["response_ids"]
    ]
    inp["entropy"] = [np.resize(x, len(r)) for x, r in zip(inp["entropy"], inp["response_ids"])]
    inp["influence"] = [
        None if x is None else np.resize(x, len(r)) for x, r in zip(inp["influence"], inp["response_ids"])
    ]
    long = build_step_table(2, **inp)
    with TraceWriter(tmp_path, {}) as w:
        w.submit(1, short)
        w.submit(2, long)
    r = TraceReader(tmp_path)
    for step, table, stored in ((1, short, False), (2, long, True)):
        names = pq.read_schema(r.step_path(step)).names
        assert all((c in names) == stored for c in DERIVED_COLUMNS), step
        reads = columns_to_read(r.schema(step), SUMMARY_COLUMNS)
        assert ("influence" in reads) == (not stored), step  # what a response list decompresses
        overview = r.step_overview(step)
        assert overview.column_names == list(SUMMARY_COLUMNS)
        for name in DERIVED_COLUMNS:
            assert overview.column(name).equals(table.column(name)), (step, name)
            assert r.read_step(step).column(name).equals(table.column(name)), (step, name)


# ---------------------------------------------------------------------------------------------
# schema v3: rank codes for long responses (trace.influence_storage=auto), v2 files
# ---------------------------------------------------------------------------------------------

V2_TRACE = Path(__file__).resolve().parent / "data" / "trace_v2"


def long_inputs(step: int = 4, n: int = 12, length: int = 300) -> tuple[dict, list]:
    """A step of long responses (average >= 64 tokens, so `auto` codes it) whose scores span
    orders of magnitude per response, with NaN (not captured), exact zeros, a null row and one
    response holding a single non-zero score."""
    inp = make_inputs(step, n=n, max_len=length)
    rng = np.random.default_rng(step)
    lengths = [length] * n
    inp["response_ids"] = [rng.integers(0, 150_000, L).astype(np.int64) for L in lengths]
    inp["entropy"] = [(rng.random(L) * 12).astype(np.float32) for L in lengths]
    infl = []
    for i, L in enumerate(lengths):
        x = (rng.standard_t(2, L) * 10.0 ** (-9 + i % 6)).astype(np.float32)
        x[rng.random(L) < 0.1] = np.nan
        x[rng.random(L) < 0.05] = 0.0
        infl.append(x)
    infl[3] = None
    infl[5] = np.zeros(length, np.float32)
    infl[5][7] = -2e-4
    inp["influence"] = infl
    return inp, infl


def test_v3_stores_long_responses_as_rank_codes_that_keep_the_top_sets_sign_zero_and_summaries(tmp_path):
    """On disk: list<int8> codes (<= 16 distinct, parquet dictionary-encoded) and the per-response
    level means; read back: NaN, zeros and signs as they were, each score within the |score| range
    of its rank level, the top token exact, the top 5 / 1 % / 10 % / 20 % / 50 % sets by |score|
    unchanged, the summaries exactly the table's. A read table written again reads the same."""
    from archer.core.trace.codec import (
        LEVELS_COLUMN,
        META_INFLUENCE_STORAGE,
        columns_to_read,
        describe_columns,
        level_ends,
    )

    # levels end after ranks 1, 5, 1 %, 10 %, 20 % and 50 % (rounded up, never shrinking)
    assert level_ends(1000).tolist() == [1, 5, 10, 100, 200, 500]
    assert level_ends(300).tolist() == [1, 5, 5, 30, 60, 150]
    assert level_ends(3).tolist() == [1, 3, 3, 3, 3, 3]
    inp, infl = long_inputs()
    table = build_step_table(4, **inp)
    with TraceWriter(tmp_path / "a", {}) as w:
        w.submit(4, table)
    r = TraceReader(tmp_path / "a")
    path = r.step_path(4)
    disk = pq.read_table(path)
    assert disk.schema.field("influence").type == pa.list_(pa.int8())
    assert disk.schema.metadata[META_INFLUENCE_STORAGE] == b"codes"
    assert r.step_info(4)["influence_storage"] == "codes"
    codes = np.asarray(disk.column("influence").combine_chunks().values.to_numpy(zero_copy_only=False))
    assert len(np.unique(codes)) <= 16
    md = pq.ParquetFile(path).metadata
    leaf = [md.schema.column(i).path for i in range(md.num_columns)].index("influence.list.element")
    assert "RLE_DICTIONARY" in md.row_group(0).column(leaf).encodings

    back = r.read_step(4)
    assert back.column_names == list(COLUMNS)  # influence_levels is storage, not a column
    assert back.schema.field("influence").type == pa.list_(pa.float32())
    for name in ("influence_sum", "influence_mean"):
        assert back.column(name).equals(table.column(name)), name  # stored: exact
        assert r.step_overview(4).column(name).equals(table.column(name)), name
    assert "influence" not in columns_to_read(r.schema(4), SUMMARY_COLUMNS)
    assert columns_to_read(r.schema(4), ["influence"]) == ["influence", LEVELS_COLUMN]
    for i, x in enumerate(infl):
        got = list_influence(back, i)
        if x is None:
            assert got is None
            continue
        x = list_influence(table, i)  # what the writer got (float16-rounded by build_step_table)
        assert np.array_equal(np.isnan(got), np.isnan(x))
        assert np.all(got[x == 0] == 0) and np.all(x[got == 0] == 0)  # zero stays zero, and only zero
        ok = ~np.isnan(x) & (x != 0)
        assert np.all(np.sign(got[ok]) == np.sign(x[ok]))
        a, g = np.abs(x[ok]), np.abs(got[ok])
        order = np.argsort(-a, kind="stable")
        ends = level_ends(len(a))
        level = np.empty(len(a), dtype=int)
        level[order] = np.searchsorted(ends, np.arange(len(a)), side="right")
        for k in np.unique(level):  # within the |score| range of its level (the bucket width)
            assert a[level == k].min() <= g[level == k].min() and g[level == k].max() <= a[level == k].max()
        assert g[order[0]] == a[order[0]]  # the top token decodes exactly
        got_order = np.argsort(-g, kind="stable")
        for top in level_ends(len(a)):  # top 1, 5, then 1 % (at least 5), 10 %, 20 %, 50 %
            assert set(got_order[:top]) == set(order[:top]), (i, top)
    assert list_influence(back, 5)[7] == np.float16(-2e-4).astype(np.float32)  # a lone score: exact
    assert list_influence(back, 5)[:7].tolist() == [0.0] * 7
    one = r.read_response(4, 2, columns=["influence", "reward"])
    np.testing.assert_array_equal(one["influence"], list_influence(back, 2))
    assert set(one) == {"influence", "reward"}
    desc = {c["name"]: c["stored"] for c in describe_columns(r.schema(4))}
    assert "rank codes" in desc["influence"] and LEVELS_COLUMN not in desc
    with pytest.raises(ValueError, match="unknown trace column"):
        r.read_step(4, columns=[LEVELS_COLUMN])

    with TraceWriter(tmp_path / "b", {}) as w:  # coding what was decoded gives the same scores
        w.submit(4, back)
    again = TraceReader(tmp_path / "b").read_step(4)
    for i in range(back.num_rows):
        a, b = list_influence(back, i), list_influence(again, i)
        assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True), i


def test_influence_storage_float16_keeps_float16_for_long_responses(tmp_path):
    """`trace.influence_storage=float16`: a long step is stored as v2 stores it (float16 under the
    step's scale, summaries stored) and reads back exactly as the table in memory; the choice is in
    summary.json, the manifest and the footer. A bad value is refused."""
    from archer.core.config.schema import TraceConfig
    from archer.core.trace.codec import META_INFLUENCE_STORAGE, storage_of

    inp, _ = long_inputs()
    table = build_step_table(4, **inp)
    cfg = TraceConfig(influence_storage="float16")
    with TraceWriter.from_config(cfg, tmp_path, {}) as w:
        assert w.influence_storage == "float16"
        w.submit(4, table)
    r = TraceReader(tmp_path)
    assert r.summary["influence_storage"] == "float16"
    assert r.step_info(4)["influence_storage"] == "float16"
    assert r.schema(4).field("influence").type == pa.list_(pa.float16())
    assert META_INFLUENCE_STORAGE not in r.schema(4).metadata  # v2's footer: the column type says it
    assert storage_of(r.schema(4)) == "float16"
    back = r.read_step(4)
    for i in range(table.num_rows):
        a, b = list_influence(table, i), list_influence(back, i)
        assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True), i
    assert back.column("influence_sum").equals(table.column("influence_sum"))
    assert TraceConfig().influence_storage == "auto"
    with pytest.raises(ValueError, match="influence_storage must be one of auto, float16"):
        TraceWriter(tmp_path / "x", {}, influence_storage="int4")


def test_short_responses_and_entropy_only_steps_stay_float16_and_say_so(tmp_path):
    """`auto` codes only steps averaging >= 64 tokens; a step without influence names no storage."""
    with TraceWriter(tmp_path, {}) as w:
        w.submit(1, make_table(1))
        w.submit(2, make_table(2, influence=False, n=4, max_len=300))
    r = TraceReader(tmp_path)
    assert r.summary["influence_storage"] == "auto" and r.schema_version == SCHEMA_VERSION == 3
    assert r.step_info(1)["influence_storage"] == "float16"
    assert r.schema(1).field("influence").type == pa.list_(pa.float16())
    assert "influence_storage" not in r.step_info(2)


def test_a_v2_trace_written_by_the_old_writer_reads_as_before(tmp_path):
    """tests/data/trace_v2: two steps written by archer's schema-v2 writer (main 5d90980): step 1
    short (float16, summaries derived), step 2 long (float16, summaries stored; built like
    `long_inputs` of the v2 tests, from make_inputs(2, n=12, max_len=300) resized to >= 128
    tokens). Both read as v2 read them; a v3 writer resuming the trace codes its long steps."""
    import shutil

    from archer.core.trace.codec import DERIVED_COLUMNS, round_influence

    trace = tmp_path / "t"
    shutil.copytree(V2_TRACE, trace)
    r = TraceReader(trace)
    assert r.schema_version == 2 and r.steps() == [1, 2]
    for step in (1, 2):
        assert r.schema(step).field("influence").type == pa.list_(pa.float16())
        assert r.schema(step).metadata[b"archer.schema_version"] == b"2"
    stored = [all(c in r.schema(s).names for c in DERIVED_COLUMNS) for s in (1, 2)]
    assert stored == [False, True]
    inp = make_inputs(1)
    back = r.read_step(1)
    want = round_influence(np.concatenate([x for x in inp["influence"] if x is not None]))
    got = np.concatenate([list_influence(back, i) for i, x in enumerate(inp["influence"]) if x is not None])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        back.column("influence_sum").to_numpy(zero_copy_only=False),
        make_table(1).column("influence_sum").to_numpy(zero_copy_only=False),
    )
    long = r.read_step(2)
    assert long.column_names == list(COLUMNS)
    assert long.schema.field("influence").type == pa.list_(pa.float32())
    assert r.step_overview(2).column("influence_mean").equals(long.column("influence_mean"))

    inp, _ = long_inputs(step=3)
    with TraceWriter(trace, {"model": "tiny"}, resume_after_step=2) as w:
        w.submit(3, build_step_table(3, **inp))
    r = TraceReader(trace)
    assert r.steps() == [1, 2, 3] and r.schema_version == 3
    assert r.schema(3).field("influence").type == pa.list_(pa.int8())
    assert r.read_step(2).schema == r.read_step(3).schema  # the same logical table
