"""SVG snapshots of the main screens at a fixed terminal size (pytest-textual-snapshot).

Regenerate after an intended UI change with `pytest tests/view/test_snapshots.py --snapshot-update`
and read the HTML diff report first. Paths on screen are relative (the test runs in a temp dir),
so the snapshots do not depend on where the tests run.
"""

from __future__ import annotations

import pytest

from archer.view.app import ArcherViewer

from .conftest import SIZE, settle
from .tracegen import save_char_tokenizer, write_trace


@pytest.fixture()
def app(tmp_path, monkeypatch):
    save_char_tokenizer(tmp_path / "run" / "tokenizer")
    write_trace(tmp_path / "run" / "trace")  # the tokenizer is found next to the trace
    monkeypatch.chdir(tmp_path)
    a = ArcherViewer("run/trace", step=2)
    a.animation_level = "none"
    return a


def before(*keys: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        for k in keys:
            await pilot.press(k)
            await settle(pilot)

    return run_before


def test_snapshot_responses(app, snap_compare):
    assert snap_compare(app, terminal_size=SIZE, run_before=before())


def test_snapshot_tokens(app, snap_compare):
    assert snap_compare(
        app,
        terminal_size=SIZE,
        run_before=before("full_stop", "full_stop", "full_stop", "2", "right", "right"),
    )


def test_snapshot_topk(app, snap_compare):
    assert snap_compare(app, terminal_size=SIZE, run_before=before("4"))


def test_snapshot_group(app, snap_compare):
    assert snap_compare(app, terminal_size=SIZE, run_before=before("g"))


def test_snapshot_across_steps(app, snap_compare):
    assert snap_compare(app, terminal_size=SIZE, run_before=before("6"))


def test_snapshot_help(app, snap_compare):
    assert snap_compare(app, terminal_size=SIZE, run_before=before("question_mark"))
