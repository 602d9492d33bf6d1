"""The demo trace shipped with archer and `archer view --demo` (issue 20, item 3)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from archer.cli.main import app as cli
from archer.core.data.chain import result_digit_mask
from archer.core.trace import TraceReader
from archer.view.app import ArcherViewer
from archer.view.demo import DEMO_DIR, copy_demo, demo_available

from .conftest import screen_text, settle

runner = CliRunner()


def test_the_demo_is_a_small_real_chain_trace_with_entropy_and_influence():
    assert demo_available()
    size = sum(f.stat().st_size for f in DEMO_DIR.rglob("*") if f.is_file())
    assert size < 400_000, size  # a few hundred KB at most
    r = TraceReader(DEMO_DIR)
    assert 2 <= len(r.steps()) <= 6
    summary = json.loads((DEMO_DIR / "trace" / "summary.json").read_text())
    assert summary["influence"] and summary["engine"] == "local"
    assert summary["run_dir"] is None and summary["tokenizer_path"] is None  # no machine's paths
    t = r.read_step(r.steps()[-1])
    assert set(t.column("data_source").to_pylist()) == {"chain"}
    lengths = t.column("response_length").to_numpy()
    assert lengths.mean() >= 10  # long responses: worked chains, not 2-token answers
    assert t.column("entropy").null_count == 0
    scored = [v for v in t.column("influence").to_pylist() if v is not None]
    assert scored and any(np.isfinite(v).any() for v in scored)
    assert 0 < np.mean(t.column("correct").to_pylist()) < 1  # right and wrong answers to compare


def test_copy_demo_makes_an_independent_run_directory(tmp_path):
    run = copy_demo(tmp_path)
    assert (run / "trace" / "manifest.jsonl").is_file() and (run / "tokenizer").is_dir()
    (run / "trace" / "manifest.jsonl").write_text("")
    assert (DEMO_DIR / "trace" / "manifest.jsonl").read_text()  # the package is untouched


def test_archer_view_demo_opens_a_temporary_copy(monkeypatch):
    opened = []

    def fake_run(self):
        opened.append(self.path)
        assert (self.path / "trace" / "manifest.jsonl").is_file()
        assert DEMO_DIR not in self.path.parents and self.path != DEMO_DIR

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(ArcherViewer, "run", fake_run)
    monkeypatch.setattr("archer.cli.view.sys", SimpleNamespace(stdin=Terminal(), stdout=Terminal()))
    r = runner.invoke(cli, ["view", "--demo"])
    assert r.exit_code == 0, r.output
    assert len(opened) == 1 and not opened[0].exists()  # the copy is removed on exit


def test_archer_view_needs_a_path_or_demo_but_not_both(tmp_path):
    r = runner.invoke(cli, ["view"])
    assert r.exit_code == 2 and "archer view --demo" in r.output
    r = runner.invoke(cli, ["view", str(tmp_path), "--demo"])
    assert r.exit_code == 2 and "not both" in r.output


async def test_the_viewer_opens_the_demo_on_its_latest_step_with_decoded_chains(tmp_path):
    run = copy_demo(tmp_path)
    steps = TraceReader(run).steps()
    app = ArcherViewer(run)
    app.animation_level = "none"
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        assert app.error is None
        assert app.step == steps[-1] and app.query_one("#steps").row_count == len(steps)
        assert app.ids_mode is False  # the tokenizer next to the trace decodes it
        assert app.row == 0 and app.tokens is not None
        text = "".join(app.texts)
        assert "=" in text and any(result_digit_mask(app.texts))
        assert f"step {steps[-1]}" in screen_text(app)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_snapshot_demo_at_terminal_sizes(tmp_path, monkeypatch, snap_compare, size):
    """The demo as `archer view --demo` first shows it (responses of the latest step)."""
    copy_demo(tmp_path)
    monkeypatch.chdir(tmp_path)
    app = ArcherViewer("demo")
    app.animation_level = "none"

    async def run_before(pilot) -> None:
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_snapshot_demo_tokens_at_terminal_sizes(tmp_path, monkeypatch, snap_compare, size):
    """The first response's tokens as entropy and influence heatmaps (the README's screenshot)."""
    copy_demo(tmp_path)
    monkeypatch.chdir(tmp_path)
    app = ArcherViewer("demo")
    app.animation_level = "none"

    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
