"""Small traces with fixed values, written by the tests themselves (archer's own writer).

`write_trace` makes a trace of four steps over the char tokenizer's ids:
  1: 2 groups x 4 responses, no influence; row 1 holds markup-looking text "[bold]..."
  2: 2 groups x 4 responses with influence (some NaN), accepted flags, row 7 has 0 tokens
  3: 2 groups x 4 responses, row 0 is 3000 tokens long (longer than any screen)
  4: no responses at all
`write_long_trace` makes `steps` steps like step 2 (more steps than any screen has rows).
`write_old_npz_trace` writes the original .npz layout (entropy_trace/ + influence_trace/).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from archer.core.trace import TraceWriter, build_step_table

SPECIAL = 4  # <pad> <eos> <bos> <unk>
EOS = 1


def char_ids(text: str) -> list[int]:
    """Ids of the char tokenizer (archer.core.models.tiny): printable ASCII from 4, newline 99."""
    return [99 if c == "\n" else SPECIAL + ord(c) - 32 for c in text]


def save_char_tokenizer(path: Path) -> Path:
    from archer.core.models.tiny import build_char_tokenizer

    build_char_tokenizer().save_pretrained(str(path))
    return path


PROMPTS = {"p0": "12+7=", "p1": "What is 3*4?"}

STEP1 = ["19", "[bold]20[/bold]", "19 ok", "18\nno", "12", "twelve", "12.0", "13"]
STEP2 = ["19", "18", "19 yes", "21\n x", "12", "12!", "13", ""]
STEP3 = ["a" * 1000 + "\n" + "b c " * 500, "x", "y", "z", "1", "2", "3", "4"]


def entropy_for(n: int, row: int, step: int) -> np.ndarray:
    """Deterministic entropy: a ramp that differs per row and step (0.1 .. ~3)."""
    return (0.1 + ((np.arange(n) * 7 + row * 3 + step) % 30) / 10.0).astype(np.float32)


def influence_for(n: int, row: int) -> np.ndarray:
    """Deterministic signed influence with NaN (not captured) at every third token."""
    v = ((np.arange(n) % 5) - 2 + row) * 1e-3
    v = v.astype(np.float32)
    v[2::3] = np.nan
    return v


def stored_influence_for(n: int, row: int, texts: list[str] = STEP2) -> np.ndarray:
    """`influence_for(n, row)` as the trace keeps it (what a reader gets back): the step's scores
    rounded to float16 under the one power-of-two scale of the step (docs/trace-format.md)."""
    from archer.core.trace.codec import round_influence

    rows = [influence_for(len(t), i) for i, t in enumerate(texts)]
    assert len(rows[row]) == n
    start = sum(len(r) for r in rows[:row])
    return round_influence(np.concatenate(rows))[start : start + n]


def _step_table(step: int, texts: list[str], with_influence: bool) -> object:
    n = len(texts)
    uid = ["p0"] * 4 + ["p1"] * 4
    resp = [np.array(char_ids(t), dtype=np.int32) for t in texts]
    reward = np.array([1, 0, 1, 0, 1, 1, 0, 0], dtype=np.float32)
    correct = [bool(r) for r in reward]
    kw = {}
    if with_influence:
        kw["influence"] = [influence_for(len(r), i) for i, r in enumerate(resp)]
        kw["accepted"] = [True, True, False, False, True, False, True, None]
    return build_step_table(
        step,
        uid=uid[:n],
        group_index=[0] * 4 + [1] * 4,
        sample_index=[0, 1, 2, 3] * 2,
        prompt_ids=[char_ids(PROMPTS[u]) for u in uid[:n]],
        response_ids=resp,
        entropy=[entropy_for(len(r), i, step) for i, r in enumerate(resp)],
        reward=reward[:n],
        advantage=(reward[:n] - 0.5) * 1.4,
        truncated=[False] * n,
        correct=correct[:n],
        data_source="synth",
        **kw,
    )


def _empty_table(step: int) -> object:
    return build_step_table(
        step,
        uid=[],
        group_index=[],
        sample_index=[],
        prompt_ids=[],
        response_ids=[],
        entropy=[],
        reward=np.zeros(0, np.float32),
        advantage=np.zeros(0, np.float32),
        truncated=np.zeros(0, bool),
    )


def write_trace(trace_dir: Path, tokenizer_dir: Path | None = None) -> Path:
    summary = {"engine": "test", "preset": "fixture", "run_dir": str(trace_dir.parent)}
    if tokenizer_dir is not None:
        summary["tokenizer_path"] = str(tokenizer_dir)
    with TraceWriter(trace_dir, summary) as w:
        w.submit(1, _step_table(1, STEP1, False))
        w.submit(2, _step_table(2, STEP2, True))
        w.submit(3, _step_table(3, STEP3, False))
        w.submit(4, _empty_table(4))
    return trace_dir


def write_long_trace(trace_dir: Path, steps: int = 60, tokenizer_dir: Path | None = None) -> Path:
    """`steps` steps, each like step 2 of `write_trace` (entropy shifted per step)."""
    summary = {"engine": "test", "preset": "long", "run_dir": str(trace_dir.parent)}
    if tokenizer_dir is not None:
        summary["tokenizer_path"] = str(tokenizer_dir)
    with TraceWriter(trace_dir, summary) as w:
        for step in range(1, steps + 1):
            w.submit(step, _step_table(step, STEP2, True))
    return trace_dir


# --------------------------------------------------------------------------------------------
# the original .npz layout
# --------------------------------------------------------------------------------------------

OLD_TEXTS = ["19", "18x", "7", "12 ok"]  # 4 responses, 2 groups (uid a, b)


def _padded(seqs: list[list[int]], width: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    arr = np.full((len(seqs), width), pad, dtype=np.int32)
    mask = np.zeros((len(seqs), width), dtype=bool)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
        mask[i, : len(s)] = True
    return arr, mask


def old_step(step: int, equal_prompts: bool) -> tuple[dict, dict]:
    """(entropy arrays, influence arrays) of one old step; influence rows are 0, 2 and 3."""
    width = 6
    ids = [char_ids(t) for t in OLD_TEXTS]
    responses, mask = _padded(ids, width, EOS)
    ent = np.zeros((4, width), dtype=np.float16)
    for i, s in enumerate(ids):
        ent[i, : len(s)] = entropy_for(len(s), i, step)
    uid = np.array(["a", "a", "b", "b"])
    entropy_arrays = {
        "entropies": ent,
        "response_mask": mask,
        "responses": responses,
        "response_index": np.arange(4, dtype=np.int32),
        "prompt_length": np.array([3, 3, 4, 4], dtype=np.int32),
        "uid": uid,
        "sample_index": np.array([10, 10, 11, 11], dtype=object),
    }
    sel = np.array([0, 2, 3], dtype=np.int32)
    infl = np.full((3, width), np.nan, dtype=np.float16)
    for k, r in enumerate(sel):
        n = len(ids[r])
        v = (np.arange(n) - 1.0) * 0.25 * (k + 1)
        v[1::2] = np.nan  # not captured (a per-response token cap)
        infl[k, :n] = v
    if equal_prompts:
        prompt_ids = np.empty((3, 3), dtype=object)
        for k in range(3):
            prompt_ids[k] = char_ids("1+2")
    else:
        prompt_ids = np.empty(3, dtype=object)
        prompt_ids[0] = char_ids("1+2")
        prompt_ids[1] = char_ids("3+40")
        prompt_ids[2] = char_ids("3+40")
    influence_arrays = {
        "entropies": ent[sel],
        "influence": infl,
        "response_mask": mask[sel],
        "responses": responses[sel],
        "selected_row_id": sel,
        "reward": np.array([1.0, 0.0, 1.0], dtype=np.float32),
        "accepted": np.array([True, False, True]),
        "group_id": np.array([0, 1, 1], dtype=np.int32),
        "prompt_ids": prompt_ids,
        "uid": uid[sel],
        "uid_hash": np.array([1, 2, 2], dtype=np.int64),
    }
    return entropy_arrays, influence_arrays


def write_old_npz_trace(
    root: Path, steps: tuple[int, ...] = (1, 2), entropy_version: int = 2, influence_version: int = 1
) -> Path:
    for kind, version in (("entropy_trace", entropy_version), ("influence_trace", influence_version)):
        d = root / kind
        (d / "steps").mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(
            json.dumps({"format_version": version, "project_name": "Archer2.0", "experiment_name": "fixture"})
        )
        lines = []
        for step in steps:
            e, i = old_step(step, equal_prompts=(step % 2 == 0))
            np.savez_compressed(d / "steps" / f"step_{step:06d}.npz", **(e if kind == "entropy_trace" else i))
            lines.append(
                json.dumps({"step": step, "file": f"steps/step_{step:06d}.npz", "entropy_mean": float("nan")})
            )
        (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


class Exploit:
    """Unpickling this would run a shell command (what the restricted unpickler must refuse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def poison_prompt_ids(root: Path, step: int, marker: Path) -> Path:
    """Rewrite influence step `step` with a `prompt_ids` pickle that calls os.system."""
    path = root / "influence_trace" / "steps" / f"step_{step:06d}.npz"
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "prompt_ids"}
    evil = np.empty(3, dtype=object)
    evil[0] = Exploit(marker)
    evil[1] = [1]
    evil[2] = [2]
    arrays["prompt_ids"] = evil
    np.savez_compressed(path, **arrays)
    assert pickle  # (np.savez pickles the object array with the Exploit inside)
    return path
