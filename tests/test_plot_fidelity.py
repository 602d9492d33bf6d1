"""bench/plot_fidelity.py: the fidelity plot of docs/influence.md is drawn from the bench's JSON,
reproducibly (the same bytes twice), and a wrong input is refused with one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plot():
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("plot_fidelity", ROOT / "bench" / "plot_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def row(set_name, factor, caps, nbytes, rho):
    return {"set": set_name, "factor": factor, "caps": caps, "bytes_per_token": nbytes, "rho_all": rho}


def test_plot_draws_every_series_and_is_reproducible(plot, tmp_path):
    data = {
        "source": "local-engine checkpoint X (step 3)",
        "device": "cpu",
        "damping": "rank",
        "date": "2026-12-07",
        "rows": [
            row("down4", 8, "default", 640, 0.76),
            row("down4", 32, "default", 160, 0.75),
            row("last_block", 8, "off", 700, 0.83),
            row("down4", 1, "exact", None, 0.78),
        ],
    }
    src = tmp_path / "fid.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "fid.svg"
    assert plot.main([str(src), "--out", str(out)]) == 0
    first = out.read_bytes()
    svg = first.decode()
    for label in (
        "last 4 down_proj",
        "last block, caps off",
        "exact last 4 down_proj",
        "default knobs",
        "goal",
    ):
        assert label in svg, label
    assert plot.main([str(src), "--out", str(out)]) == 0
    assert out.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_plot_refuses_a_json_that_is_not_the_bench_s(plot, tmp_path):
    src = tmp_path / "other.json"
    src.write_text(json.dumps({"steps": []}))
    with pytest.raises(SystemExit, match="not a bench/influence_fidelity.py JSON"):
        plot.main([str(src), "--out", str(tmp_path / "x.svg")])
