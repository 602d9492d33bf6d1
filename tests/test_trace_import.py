"""Legacy .npz trace import (`archer trace import-npz`): the defects of issue 17, one test each.

The old traces here are written in code (the original writer's layout: padded [responses, width]
arrays whose padding is the EOS id, `response_mask` telling tokens from padding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.trace import TraceReader
from archer.core.trace.npz_import import import_npz, load_npz
from archer.errors import TraceError

EOS = 2
WIDTH = 5
runner = CliRunner()


def _padded(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.full((len(seqs), WIDTH), EOS, dtype=np.int32)
    mask = np.zeros((len(seqs), WIDTH), dtype=bool)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
        mask[i, : len(s)] = True
    return arr, mask


# row 0 ends with EOS in the last column (finished); row 1 fills the width without EOS (cut off);
# row 2 is short and ends with EOS; row 3 is short
SEQS = [[5, 6, 7, 8, EOS], [5, 6, 7, 8, 9], [7, EOS], [9]]


def write_old(root: Path, *, steps=(1,), prompt_ids: np.ndarray | None = None, pad: bool = True) -> Path:
    seqs = SEQS if pad else [[5, 6, 7, 8, EOS], [5, 6, 7, 8, 9]]
    n = len(seqs)
    responses, mask = _padded(seqs)
    ent = np.where(mask, 0.5, 0).astype(np.float16)
    sel = np.arange(n, dtype=np.int32)[::2][: max(1, n // 2)]  # influence rows 0 and 2 (or just 0)
    if prompt_ids is None:
        prompt_ids = np.empty(len(sel), dtype=object)
        for k in range(len(sel)):
            prompt_ids[k] = [1, 1, k]
    for kind in ("entropy_trace", "influence_trace"):
        d = root / kind
        (d / "steps").mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"format_version": 2 if kind == "entropy_trace" else 1}))
        lines = []
        for step in steps:
            if kind == "entropy_trace":
                arrays = {
                    "entropies": ent,
                    "response_mask": mask,
                    "responses": responses,
                    "response_index": np.arange(n, dtype=np.int32),
                    "prompt_length": np.arange(n, dtype=np.int32) + 3,
                    "uid": np.array([f"u{i // 2}" for i in range(n)]),
                }
            else:
                arrays = {
                    "entropies": ent[sel],
                    "influence": np.where(mask[sel], 0.25, 0).astype(np.float16),
                    "response_mask": mask[sel],
                    "responses": responses[sel],
                    "selected_row_id": sel,
                    "reward": np.ones(len(sel), dtype=np.float32),
                    "accepted": np.ones(len(sel), dtype=bool),
                    "group_id": np.arange(len(sel), dtype=np.int32) + 40,
                    "uid_hash": np.arange(len(sel), dtype=np.int64) + 7000,
                    "prompt_ids": prompt_ids,
                    "uid": np.array([f"u{i // 2}" for i in sel]),
                }
            np.savez(d / "steps" / f"step_{step:06d}.npz", **arrays)
            lines.append(json.dumps({"step": step, "file": f"steps/step_{step:06d}.npz"}))
        (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_an_eos_in_the_last_column_is_not_truncated(tmp_path):
    import_npz(write_old(tmp_path / "old"), tmp_path / "new")
    t = TraceReader(tmp_path / "new").read_step(1)
    assert t.column("response_length").to_pylist() == [5, 5, 2, 1]
    assert t.column("truncated").to_pylist() == [False, True, False, False]


def test_eos_id_carries_over_to_a_step_without_padding(tmp_path):
    """A step where every response fills the width has no padding to learn EOS from: the id seen
    in an earlier step (or the summary) decides; without either, the import says so."""
    old = write_old(tmp_path / "old", steps=(1,))
    donor = write_old(tmp_path / "donor", steps=(2,), pad=False)
    unpadded = write_old(tmp_path / "unpadded", steps=(2,), pad=False)
    for kind in ("entropy_trace", "influence_trace"):
        (donor / kind / "steps" / "step_000002.npz").rename(old / kind / "steps" / "step_000002.npz")
        with open(old / kind / "manifest.jsonl", "a") as f:
            f.write(json.dumps({"step": 2, "file": "steps/step_000002.npz"}) + "\n")
    import_npz(old, tmp_path / "new")
    assert TraceReader(tmp_path / "new").read_step(2).column("truncated").to_pylist() == [False, True]
    report = import_npz(unpadded, tmp_path / "alone")
    assert TraceReader(tmp_path / "alone").read_step(2).column("truncated").to_pylist() == [True, True]
    assert any("EOS id is unknown" in w for w in report.warnings)
    s = json.loads((unpadded / "entropy_trace" / "summary.json").read_text())
    (unpadded / "entropy_trace" / "summary.json").write_text(json.dumps({**s, "eos_token_id": EOS}))
    import_npz(unpadded, tmp_path / "with-summary")
    assert TraceReader(tmp_path / "with-summary").read_step(2).column("truncated").to_pylist() == [
        False,
        True,
    ]


def test_legacy_group_id_uid_hash_and_prompt_length_are_kept_as_columns(tmp_path):
    import_npz(write_old(tmp_path / "old"), tmp_path / "new")
    t = TraceReader(tmp_path / "new").read_step(1)
    assert t.column("prompt_length").to_pylist() == [3, 4, 5, 6]
    assert t.column("group_id").to_pylist() == [40, None, 41, None]  # influence rows 0 and 2 only
    assert t.column("uid_hash").to_pylist() == [7000, None, 7001, None]


def test_object_arrays_of_numpy_scalars_are_admitted_and_other_globals_still_refused(tmp_path):
    prompts = np.empty(2, dtype=object)
    prompts[0] = [np.int64(1), np.int32(2), np.int16(3)]
    prompts[1] = np.int64(9)  # a bare numpy scalar element (no ids recorded)
    old = write_old(tmp_path / "old", prompt_ids=prompts)
    loaded = load_npz(old / "influence_trace" / "steps" / "step_000001.npz", ["prompt_ids"])["prompt_ids"]
    assert loaded[0] == [1, 2, 3] and isinstance(loaded[0][0], np.int64) and loaded[1] == 9
    import_npz(old, tmp_path / "new")
    assert TraceReader(tmp_path / "new").read_step(1).column("prompt_ids").to_pylist()[0] == [1, 2, 3]

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    prompts[1] = Evil()
    bad = write_old(tmp_path / "bad", prompt_ids=prompts)
    with pytest.raises(TraceError, match="builtins.print, which is refused"):
        load_npz(bad / "influence_trace" / "steps" / "step_000001.npz")


def test_a_refused_import_leaves_nothing_behind(tmp_path):
    old = write_old(tmp_path / "old", steps=(1, 2))
    prompts = np.empty(2, dtype=object)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    prompts[0], prompts[1] = [1], Evil()
    bad = write_old(tmp_path / "bad", steps=(2,), prompt_ids=prompts)
    (bad / "influence_trace" / "steps" / "step_000002.npz").replace(
        old / "influence_trace" / "steps" / "step_000002.npz"
    )  # step 1 converts, step 2 is refused
    for target in (tmp_path / "new", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        r = runner.invoke(app, ["trace", "import-npz", str(old), str(target)])
        assert r.exit_code == 1 and "refused" in r.output, r.output
        assert (not target.exists()) if target.name == "new" else list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "empty", "old"]  # no staging debris
    r = runner.invoke(
        app, ["trace", "import-npz", str(write_old(tmp_path / "good")), str(tmp_path / "empty")]
    )
    assert r.exit_code == 0, r.output  # an empty directory is a fine target
    assert TraceReader(tmp_path / "empty").steps() == [1]


@pytest.mark.parametrize("which", ["root", "entropy_trace", "influence_trace", "run_dir_trace"])
def test_info_and_view_on_an_old_npz_trace_name_the_converter(tmp_path, which):
    old = write_old(tmp_path / "old")
    path = {
        "root": old,
        "entropy_trace": old / "entropy_trace",
        "influence_trace": old / "influence_trace",
        "run_dir_trace": old,
    }[which]
    if which == "run_dir_trace":  # a run directory whose trace/ is an old trace
        (tmp_path / "run").mkdir()
        (old / "entropy_trace").rename(tmp_path / "run" / "trace")
        path = tmp_path / "run"
    with pytest.raises(TraceError) as e:
        TraceReader(path)
    assert "original .npz layout" in e.value.message and "archer trace import-npz" in e.value.hint
    for cmd in (["trace", "info", str(path)], ["view", str(path)]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 1, r.output
        assert "archer trace import-npz" in r.output and "corrupt" not in r.output, r.output
