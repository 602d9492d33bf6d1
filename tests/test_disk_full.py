"""A full disk gives one clear error and loses nothing (issue 17, item 5).

ENOSPC is injected where archer writes (torch.save, the trace's parquet writer, metrics.jsonl,
atomic small files): the error names the path and the free space, keeps the original error as its
cause, leaves no temporary file, and the last complete checkpoint stays loadable; closing the trace
writer afterwards does not replace the error.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from small_run import SMALL_PRESET, SMALL_RUN
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.config import compose
from archer.core.metrics import read_metrics
from archer.core.storage import DiskFullError, disk_full_error

TINY = [
    *SMALL_RUN,
    "rollout.val.max_prompts=8",
    "trainer.total_steps=2",
    "trainer.save_every=1",
    "trainer.val_before_train=false",
]


def enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warm")
    train(root / "cache", root / "run")
    return root / "cache"


def train(cache: Path, out: Path, *extra: str, resume: bool = False):
    from archer.core.engines.local.trainer import train as local_train

    c = compose(
        str(out / "config.yaml") if resume else SMALL_PRESET, [*TINY, f"trainer.cache_dir={cache}", *extra]
    )
    return local_train(c, out, resume=resume)


def temp_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name]


def fail_on_call(monkeypatch, target, name: str, call: int, error=enospc) -> None:
    original = getattr(target, name)
    seen = [0]

    def wrapped(*args, **kwargs):
        seen[0] += 1
        if seen[0] == call:
            raise error()
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


def test_checkpoint_on_a_full_disk_keeps_the_last_good_one(cache, tmp_path, monkeypatch):
    import torch

    from archer.core.engines.local.checkpoint import latest_checkpoint, load_trainer_state

    fail_on_call(monkeypatch, torch, "save", 2)  # the step-2 checkpoint's trainer state
    out = tmp_path / "run"
    with pytest.raises(DiskFullError) as e:
        train(cache, out)
    message = e.value.message
    assert "no space left on the device writing" in message and "step_000002" in message
    assert "free there" in message and "--resume" in e.value.hint
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    assert temp_files(out) == []
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.txt", "step_000001"]
    assert latest_checkpoint(out).name == "step_000001"
    assert load_trainer_state(out / "checkpoints" / "step_000001")["step"] == 1
    monkeypatch.undo()
    train(cache, out, resume=True)  # space is back: the run continues from step 1
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


def test_a_trace_write_on_a_full_disk_names_the_trace_and_leaves_no_temp_file(cache, tmp_path, monkeypatch):
    from archer.core.trace import writer

    original = writer.pq.write_table
    calls = [0]

    def write_table(table, where, **kw):
        step_file = Path(where).parent.name == "steps"  # the trace's step files only
        calls[0] += step_file
        if step_file and calls[0] == 2:
            Path(where).write_bytes(b"PAR1 half a file")  # what a full disk leaves
            raise enospc()
        return original(table, where, **kw)

    monkeypatch.setattr(writer.pq, "write_table", write_table)
    out = tmp_path / "run"
    with pytest.raises(DiskFullError) as e:
        train(cache, out)
    assert f"writing {out / 'trace' / 'steps'}" in e.value.message and "free there" in e.value.message
    assert isinstance(e.value.__cause__, OSError)
    assert temp_files(out) == []
    # the step-2 checkpoint never got ahead of its trace
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000001"]


def test_closing_the_trace_does_not_mask_the_first_error(cache, tmp_path, monkeypatch):
    import torch

    from archer.core.trace.writer import TraceWriter

    fail_on_call(monkeypatch, torch, "save", 1)
    monkeypatch.setattr(TraceWriter, "_update_summary", lambda self, changes: (_ for _ in ()).throw(enospc()))
    out = tmp_path / "run"
    with pytest.raises(DiskFullError) as e:
        train(cache, out)
    assert "step_000001" in e.value.message  # the checkpoint's failure, not the trace's close
    assert any("while closing" in n and "summary.json" in n for n in getattr(e.value, "__notes__", []))
    assert temp_files(out) == []


def test_metrics_on_a_full_disk(cache, tmp_path):
    from archer.core.engines.local.trainer import LocalTrainer

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise enospc()

        def flush(self):
            self.f.flush()

        def close(self):
            self.f.close()

    out = tmp_path / "run"
    t = LocalTrainer(compose(SMALL_PRESET, [*TINY, f"trainer.cache_dir={cache}"]), out)
    try:
        t.setup()
        t.metrics_log._file = FullFile(t.metrics_log._file)
        with pytest.raises(DiskFullError) as e:
            t.fit()
    finally:
        t.close()
    assert f"writing {out / 'metrics.jsonl'}" in e.value.message
    assert isinstance(e.value.__cause__, OSError)


def test_small_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    from archer.core.run import atomic_write_text

    target = tmp_path / "latest.txt"
    atomic_write_text(target, "old\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(enospc()))
    with pytest.raises(DiskFullError) as e:
        atomic_write_text(target, "new\n", fsync=True)
    assert str(target) in e.value.message
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["latest.txt"]


def test_torch_save_failure_counts_as_a_full_disk_only_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    from archer.core import storage

    err = RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file")
    err2 = RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")
    monkeypatch.setattr(storage, "free_bytes", lambda path: 10 * 2**30)
    assert disk_full_error(tmp_path, err2) is None
    monkeypatch.setattr(storage, "free_bytes", lambda path: 2**20)
    full = disk_full_error(tmp_path / "x", err2)
    assert full is not None and "(1.0 MiB free there)" in full.message
    assert disk_full_error(tmp_path, err) is None  # not a write failure
    assert disk_full_error(tmp_path, ValueError("bad")) is None


def test_the_cli_prints_one_line_not_a_traceback(cache, tmp_path, monkeypatch):
    import torch

    fail_on_call(monkeypatch, torch, "save", 1)
    out = tmp_path / "run"
    r = CliRunner().invoke(
        app, ["train", "--preset", SMALL_PRESET, "--out", str(out), *TINY, f"trainer.cache_dir={cache}"]
    )
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no space left on the device writing" in errors[0], r.output
    assert "unexpected error" not in r.output and "Traceback" not in r.output


def _namespaces_with_mounts() -> str | None:
    """Why a private tmpfs cannot be mounted here (None when it can: user + mount namespaces)."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return "no unshare(1)"
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"unshare -rm failed: {r.stderr.strip()[:200]}"


@pytest.mark.skipif(
    _namespaces_with_mounts() is not None, reason="needs user and mount namespaces (unshare -rm)"
)
@pytest.mark.parametrize("size_kib", [48, 160, 320, 480, 640])
def test_a_real_small_tmpfs_gives_one_clear_line(cache, tmp_path, size_kib):
    """`archer train` on a tmpfs of a few hundred KiB (private to the test's mount namespace): the
    size decides which write finds the disk full (data, warm-up, a checkpoint, the trace), and each time
    the run exits 1 with one line naming the path and the free space, leaving no temp file and a
    loadable last checkpoint."""
    import os
    import subprocess
    import sys

    from archer.core.engines.local.checkpoint import latest_checkpoint, load_trainer_state

    mnt, keep = tmp_path / "mnt", tmp_path / "kept"
    mnt.mkdir()
    script = (
        'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 97; mnt="$2"; keep="$3"; shift 3; "$@"; rc=$?; '
        'find "$mnt" -name "*.tmp*" > "$keep.temps"; cp -a "$mnt/run" "$keep" 2>/dev/null; exit $rc'
    )
    args = [*TINY, f"trainer.cache_dir={cache}", "trainer.total_steps=6", "trainer.keep_checkpoints=2"]
    cmd = ["unshare", "-rm", "sh", "-c", script, "sh", f"{size_kib}k", str(mnt), str(keep)]
    cmd += [
        sys.executable,
        "-m",
        "archer",
        "train",
        "--preset",
        SMALL_PRESET,
        "--out",
        str(mnt / "run"),
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "300"})
    assert r.returncode == 1, r.stdout[-1500:] + r.stderr[-1500:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    assert "no space left on the device writing" in errors[0] and "free there" in errors[0], r.stderr
    assert "unexpected error" not in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "kept.temps").read_text() == ""  # no temporary file left on the full disk
    last = latest_checkpoint(keep) if keep.exists() else None
    if last is not None:  # the last complete checkpoint still loads
        assert load_trainer_state(last)["step"] == int(last.name.split("_")[1])
