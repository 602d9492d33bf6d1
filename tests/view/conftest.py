"""Fixtures for the viewer tests: traces written by the tests themselves (see tracegen.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .tracegen import save_char_tokenizer, write_trace

SIZE = (160, 48)


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    return save_char_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tok_dir) -> Path:
    """A run directory whose trace records the char tokenizer's path in summary.json."""
    run = tmp_path_factory.mktemp("run") / "run"
    write_trace(run / "trace", tokenizer_dir=tok_dir)
    return run


@pytest.fixture(scope="session")
def bare_trace(tmp_path_factory) -> Path:
    """A trace directory with no tokenizer anywhere (ids mode)."""
    return write_trace(tmp_path_factory.mktemp("bare") / "trace")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture()
def truncated_trace(tmp_path, bare_trace) -> Path:
    d = _copy(bare_trace, tmp_path / "trace")
    f = d / "steps" / "step_000002.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


@pytest.fixture()
def corrupt_trace(tmp_path, bare_trace) -> Path:
    """Step 2 has flipped bytes in its data pages (same size: only the checksum catches it)."""
    d = _copy(bare_trace, tmp_path / "trace")
    f = d / "steps" / "step_000002.parquet"
    raw = bytearray(f.read_bytes())
    for i in range(200, 1200):
        raw[i] ^= 0x5A
    f.write_bytes(bytes(raw))
    return d


@pytest.fixture()
def no_manifest_trace(tmp_path, bare_trace) -> Path:
    d = _copy(bare_trace, tmp_path / "trace")
    (d / "manifest.jsonl").unlink()
    return d


@pytest.fixture()
def future_trace(tmp_path, bare_trace) -> Path:
    d = _copy(bare_trace, tmp_path / "trace")
    s = json.loads((d / "summary.json").read_text())
    s["schema_version"] = 99
    (d / "summary.json").write_text(json.dumps(s))
    return d


def _busy(app) -> bool:
    from textual.worker import WorkerState

    return any(w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in app.workers)


async def _wait_for_workers(app) -> None:
    """Wait for every worker; one cancelled on purpose (an exclusive worker replaced by a newer one,
    e.g. a response load superseded by the next) is not a failure. A worker that raised still is."""
    from textual.worker import WorkerCancelled

    for worker in list(app.workers):
        try:
            await worker.wait()
        except WorkerCancelled:
            pass


async def settle(pilot, max_rounds: int = 12) -> None:
    """Wait until no worker runs and every message they posted has been handled."""
    app = pilot.app
    for _ in range(max_rounds):
        await pilot.pause()
        if not _busy(app):
            await pilot.pause()  # handle what the last worker posted (may start another)
            if not _busy(app):
                break
        await _wait_for_workers(app)
    # tables size their columns on Idle: give them their turn before anyone looks at the screen
    await pilot.pause()
    await pilot.pause()


def screen_text(app) -> str:
    """The text on the current screen, one line per terminal row."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in s) for s in strips)


def static_text(app, selector: str) -> str:
    """The plain text a Static/Label shows."""
    return str(app.query_one(selector).content)
