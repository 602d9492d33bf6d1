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


# ---------------------------------------------------------------------------------- terminal sizes
@pytest.fixture()
def long_app(tmp_path, monkeypatch):
    """60 steps (more than any screen's rows), opened at the latest: the step list must scroll to it."""
    from .tracegen import write_long_trace

    save_char_tokenizer(tmp_path / "run" / "tokenizer")
    write_long_trace(tmp_path / "run" / "trace")
    monkeypatch.chdir(tmp_path)
    a = ArcherViewer("run/trace")
    a.animation_level = "none"
    return a


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)], ids=["80x24", "120x40", "200x50"])
def test_snapshot_first_open_at_terminal_sizes(long_app, snap_compare, size):
    """80x24: the step list starts hidden and the responses get the width; 120x40 and 200x50: the
    step list takes 2/5 (at most 58 columns) with the latest step highlighted and scrolled into view."""
    assert snap_compare(long_app, terminal_size=size, run_before=before())


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)], ids=["80x24", "120x40", "200x50"])
def test_snapshot_tokens_at_terminal_sizes(app, snap_compare, size):
    """The legends fit the panes (the gradient narrows and the notes shorten before a number is cut)."""
    assert snap_compare(app, terminal_size=size, run_before=before("full_stop", "full_stop", "2"))


def test_snapshot_step_list_toggled_on_at_80x24(long_app, snap_compare):
    assert snap_compare(long_app, terminal_size=(80, 24), run_before=before("t"))
