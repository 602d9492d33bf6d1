"""`archer collect`: run discovery and status, metric summaries, influence quality with
hand-computed values (tests/collect_fixtures.py), every output format, --metrics, plots."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.collect import build_table
from archer.core.collect.quality import mann_whitney_auc, rankdata, spearman, top_overlap_fraction
from archer.core.sweep import Case, Sweep
from archer.core.sweep.state import Attempt, CaseRecord

sys.path.insert(0, str(Path(__file__).parent))
from collect_fixtures import EXPECTED, metrics_rows, write_run, write_runs

runner = CliRunner()
ORDER = ("baseline", "inverse", "identity", "diverged", "crashed")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return write_runs(tmp_path_factory.mktemp("runs"))


def paths(root: Path) -> list[Path]:
    return [root / n for n in ORDER] + [root / "gone"]


def invoke(*args: str):
    r = runner.invoke(app, ["collect", *args], catch_exceptions=False, env={"COLUMNS": "400"})
    return r


# --------------------------------------------------------------------------- statistics
def test_statistics_helpers():
    assert mann_whitney_auc(np.array([3.0, 1.0]), np.array([2.0, 0.0])) == 0.75
    assert mann_whitney_auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert list(rankdata(np.array([10.0, 20.0, 10.0, 5.0]))) == [2.5, 4.0, 2.5, 1.0]
    x = np.arange(7.0)
    y = x.copy()
    y[[4, 5]] = y[[5, 4]]
    assert spearman(x, y) == pytest.approx(1 - 6 * 2 / (7 * 48))
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.ones(7)) is None and spearman(x[:2], x[:2]) is None
    # 5 tokens -> k = 1: the largest |influence| is token 1 (-4 beats 3), the highest entropy token 1 or 0
    assert top_overlap_fraction(np.array([3.0, -4, 1, 0, 0]), np.array([0.0, 9, 1, 2, 3])) == 1.0
    assert top_overlap_fraction(np.array([3.0, -4, 1, 0, 0]), np.array([9.0, 0, 1, 2, 3])) == 0.0
    # 10 tokens -> k = 2: {0, 1} by |influence|, {1, 2} by entropy
    assert (
        top_overlap_fraction(
            np.array([9.0, -8, 1, 0, 0, 0, 0, 0, 0, 0]), np.array([0.0, 9, 8, 1, 1, 1, 1, 1, 1, 1])
        )
        == 0.5
    )
    assert top_overlap_fraction(np.array([]), np.array([])) is None


# --------------------------------------------------------------------------- the table
def test_table_values(runs):
    t = build_table(paths(runs))
    rows = {r["run"]: r for r in t.rows}
    assert [r["run"] for r in t.rows] == [*ORDER, "gone"]
    assert t.reference == "inverse"  # the first run with influence in the trace
    # statuses: from files (no sweep here)
    assert [rows[n]["status"] for n in [*ORDER, "gone"]] == [
        "finished",
        "finished",
        "finished",
        "incomplete",
        "failed",
        "missing",
    ]
    assert rows["diverged"]["reason"] == "2/3 steps"
    assert rows["crashed"]["reason"] == "unexpected error: RuntimeError: CUDA error: device-side assert"
    assert rows["gone"]["reason"] == "no such directory"
    # config columns: exactly the keys that differ (trace/out paths never count)
    assert t.config_columns == ["seed", "influence.enable", "influence.hessian_mode"]
    assert [rows[n]["influence.hessian_mode"] for n in ORDER] == [
        None,
        "inverse",
        "identity",
        "identity",
        "inverse",
    ]
    assert rows["baseline"]["influence.enable"] is False and rows["diverged"]["seed"] == 1
    # summaries: medians of time/*, max of memory, mean of influence counts, final and best rewards
    inv = rows["inverse"]
    assert (inv["steps"], inv["step_s"], inv["rollout_s"], inv["update_s"], inv["influence_s"]) == (
        3,
        4.0,
        1.0,
        0.5,
        0.25,
    )
    assert inv["infl_solve_s"] == pytest.approx(0.02) and inv["cpu_mem_gb"] == 4.0
    assert (inv["groups_selected"], inv["rows_emitted"]) == (2.0, 8.0)
    assert (inv["reward_final"], inv["reward_best"], inv["acc_final"], inv["acc_best"]) == (
        0.625,
        0.75,
        0.3125,
        0.375,
    )
    assert (inv["val_acc_final"], inv["val_acc_best"]) == (0.5, 0.5)
    assert (
        rows["diverged"]["step_s"] == 3.0 and rows["diverged"]["reward_final"] == 0.75
    )  # 2 steps: median of 1.5, 4.5
    assert rows["baseline"]["influence_s"] is None and rows["gone"]["steps"] is None
    assert "gpu_mem_gb" not in t.columns  # empty for every run: dropped
    assert "attempts" not in t.columns  # no sweep here


def test_influence_quality_has_the_hand_computed_values(runs):
    t = build_table(paths(runs))
    rows = {r["run"]: r for r in t.rows}
    for name, exp in EXPECTED.items():
        for key, value in exp.items():
            got = rows[name][key]
            assert (got is None) if value is None else got == pytest.approx(value), (name, key, got)
    assert rows["identity"]["spearman_ref"] == "inverse" and rows["diverged"]["spearman_ref"] == "inverse"
    assert rows["baseline"]["spearman_ref"] is None and rows["inverse"]["spearman_ref"] is None
    assert rows["inverse"]["trace_steps"] == 2


def test_keys_missing_from_an_older_config_are_not_differences(runs, tmp_path):
    import shutil

    import yaml

    old = tmp_path / "old"
    shutil.copytree(runs / "identity", old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    del cfg["influence"]["storage_dtype"]  # as if written by an archer without that key
    cfg.pop("agent", None)
    cfg["verl"] = {"trainer": {"nnodes": 2}}  # free-form: present only when set, so absence is a value
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    t = build_table([runs / "identity", old])
    assert t.config_columns == ["verl.trainer.nnodes"]
    assert [r["verl.trainer.nnodes"] for r in t.rows] == [None, 2]


def test_reference_can_be_chosen(runs):
    t = build_table(paths(runs), reference="identity")
    rows = {r["run"]: r for r in t.rows}
    assert rows["inverse"]["spearman"] == pytest.approx(55 / 56) and rows["identity"]["spearman"] is None
    r = invoke(*map(str, paths(runs)), "--reference", "nosuch")
    assert r.exit_code == 2 and "no such run" in r.output


def test_folder_search_finds_runs_once(runs):
    t = build_table([runs, runs / "inverse"])
    assert sorted(r["run"] for r in t.rows) == sorted(ORDER)


# --------------------------------------------------------------------------- formats
def test_csv(runs):
    r = invoke(*map(str, paths(runs)), "--format", "csv")
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [x["run"] for x in rows] == [*ORDER, "gone"]
    ident = next(x for x in rows if x["run"] == "identity")
    assert float(ident["auc"]) == pytest.approx(5 / 6, abs=1e-6) and float(
        ident["spearman"]
    ) == pytest.approx(55 / 56, abs=1e-6)
    assert ident["influence.hessian_mode"] == "identity" and ident["status"] == "finished"
    assert ident["path"].endswith("identity")
    gone = rows[-1]
    assert gone["status"] == "missing" and gone["auc"] == "" and gone["steps"] == ""


def test_json(runs):
    r = invoke(*map(str, paths(runs)), "--format", "json")
    data = json.loads(r.stdout)
    assert [x["run"] for x in data] == [*ORDER, "gone"]
    inv = data[1]
    assert (
        inv["auc"] == pytest.approx(19 / 24, rel=1e-5)
        and inv["top20_overlap"] == 0.75
        and inv["spearman"] is None
    )
    assert inv["influence.enable"] is True and inv["steps"] == 3 and data[0]["influence.enable"] is False
    assert list(inv)[:6] == ["run", "status", "reason", "seed", "influence.enable", "influence.hessian_mode"]


def test_markdown(runs):
    r = invoke(*map(str, paths(runs)), "--format", "markdown")
    lines = r.stdout.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:6] == ["run", "status", "reason", "seed", "influence.enable", "influence.hessian_mode"]
    assert "path" not in header and set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]
    }
    ident = dict(zip(header, cells["identity"]))
    assert ident["auc"] == "0.8333" and ident["spearman"] == "0.9821" and ident["top20_overlap"] == "0.5"
    assert dict(zip(header, cells["gone"]))["status"] == "missing"
    assert len(lines) == 2 + 6


def test_rich_table_on_screen_and_in_a_file(runs, tmp_path):
    r = invoke(*map(str, paths(runs)))
    assert r.exit_code == 0
    out = r.stdout
    for name in [*ORDER, "gone"]:
        assert name in out
    assert "hessian_mode" in out and "0.833" in out and "0.982" in out and "spearman vs inverse" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("identity"))
    assert "finished" in row and "identity" in row.split("finished", 1)[1]  # one line per run, nothing folded
    f = tmp_path / "table.txt"
    r = invoke(*map(str, paths(runs)), "--out", str(f))
    assert r.exit_code == 0 and "wrote" in r.stdout and "0.792" in f.read_text()


def test_out_suffix_picks_the_format_and_writes_atomically(runs, tmp_path):
    for suffix, check in (
        (".csv", lambda s: s.startswith("run,status")),
        (".md", lambda s: s.startswith("| run |")),
        (".json", lambda s: json.loads(s)[0]["run"] == "baseline"),
    ):
        f = tmp_path / f"res{suffix}"
        r = invoke(*map(str, paths(runs)), "-o", str(f))
        assert r.exit_code == 0 and check(f.read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_metrics_globs_add_final_values(runs):
    r = invoke(
        str(runs / "inverse"),
        str(runs / "identity"),
        "--format",
        "json",
        "--metrics",
        "actor/*",
        "--metrics",
        "nothing/here",
    )
    data = json.loads(r.stdout)
    assert data[0]["actor/grad_norm"] == pytest.approx(0.3) and data[0]["actor/pg_loss"] == -1.5
    assert "no metric of these runs matches" in r.stderr


def test_no_runs_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = invoke(str(tmp_path / "empty"))
    assert r.exit_code == 2 and "no runs found" in r.output


def test_a_broken_trace_costs_its_columns_not_the_table(tmp_path):
    run = write_run(tmp_path / "r", [], metrics_rows(1.0), {1: [[0.5, 0.25]] * 8, 2: [[0.5, 0.25]] * 8})
    (run / "trace" / "summary.json").write_text("{not json")
    t = build_table([run])
    assert t.rows[0]["status"] == "finished" and t.rows[0]["step_s"] == 2.0 and t.rows[0].get("auc") is None
    assert any("trace not read" in w for w in t.warnings)


# --------------------------------------------------------------------------- sweeps
def test_sweep_status_reason_attempts_and_missing_cases(runs, tmp_path):
    sw = tmp_path / "sw"
    sw.mkdir()
    import shutil

    for n in ("baseline", "inverse", "crashed"):
        shutil.copytree(runs / n, sw / n)
    recs = []
    for n, status, reason in (
        ("baseline", "done", None),
        ("inverse", "done", None),
        ("crashed", "failed", "OutOfMemoryError: CUDA out of memory"),
        ("never", "pending", None),
        ("deleted", "done", None),
    ):
        c = Case(settings={"influence.hessian_mode": n})
        rec = CaseRecord(
            id=n, settings=c.settings, overrides=c.overrides, run_dir=n, status=status, reason=reason
        )
        if status != "pending":
            rec.attempts = [Attempt(n=1, started="t", command=["x"], oom=status == "failed")]
        if status == "failed":
            rec.attempts.append(Attempt(n=2, started="t", command=["x"], offload=True))
            rec.oom = True
        recs.append(rec)
    Sweep(
        dir=sw,
        preset="quickstart-influence",
        preset_path="quickstart-influence",
        grid={},
        grid_file=None,
        overrides=[],
        engine="local",
        cases=recs,
    ).save()
    t = build_table([sw])
    rows = {r["run"]: r for r in t.rows}
    assert [r["run"] for r in t.rows] == ["baseline", "inverse", "crashed", "never", "deleted"]
    assert (
        rows["crashed"]["status"] == "failed"
        and rows["crashed"]["reason"] == "OutOfMemoryError: CUDA out of memory"
    )
    assert (
        rows["crashed"]["attempts"] == 2
        and rows["crashed"]["oom"] is True
        and rows["inverse"]["oom"] is False
    )
    assert rows["never"]["status"] == "missing" and rows["never"]["reason"] == "not run yet"
    assert rows["deleted"]["status"] == "missing" and "gone" in rows["deleted"]["reason"]
    # a case that never ran still shows its grid setting (from sweep.json)
    assert rows["never"]["influence.hessian_mode"] == "never"
    assert rows["inverse"]["auc"] == pytest.approx(19 / 24)


# --------------------------------------------------------------------------- plots
def test_png_plots(runs, tmp_path):
    r = invoke(*map(str, paths(runs)), "--plot", str(tmp_path / "plots"), "--format", "csv")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["influence_auc.png", "reward.png", "step_time.png"]
    for p in (tmp_path / "plots").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_terminal_plots(runs):
    r = invoke(str(runs / "inverse"), str(runs / "identity"), "--format", "csv", "--plot-terminal")
    assert r.exit_code == 0
    assert "reward/mean per step" in r.stdout and "median s/step" in r.stdout and "influence AUC" in r.stdout


@pytest.mark.parametrize("flag, module", [("--plot", "matplotlib"), ("--plot-terminal", "plotext")])
def test_missing_plot_libraries_fail_with_one_line_hint(runs, tmp_path, monkeypatch, flag, module):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    args = [str(runs / "inverse"), flag] + ([str(tmp_path / "p")] if flag == "--plot" else [])
    r = runner.invoke(app, ["collect", *args])
    assert r.exit_code == 1
    assert f"plotting needs {module}" in r.output and "pip install -e '.[plot]'" in r.output
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- reading on screen
@pytest.fixture(scope="module")
def sweep3(tmp_path_factory, runs) -> Path:
    """A 3-case sweep as `archer ablate` leaves it: baseline, inverse and identity (done)."""
    import shutil

    from collect_fixtures import INVERSE, identity_influence

    sw = tmp_path_factory.mktemp("sweep3") / "abl"
    sw.mkdir()
    cases = (
        ("baseline", {"influence.enable": False}, ["influence.enable=false"], None, 1.0),
        ("inverse-ef5c5e7a", {"influence.hessian_mode": "inverse"}, [], INVERSE, 2.0),
        (
            "identity-e788a03a",
            {"influence.hessian_mode": "identity"},
            ["influence.hessian_mode=identity"],
            identity_influence(),
            1.5,
        ),
    )
    recs = []
    for cid, settings, overrides, influence, scale in cases:
        write_run(sw / cid, overrides, metrics_rows(scale, influence=influence is not None), influence)
        c = Case(settings=settings)
        rec = CaseRecord(id=cid, settings=c.settings, overrides=c.overrides, run_dir=cid, status="done")
        rec.attempts = [Attempt(n=1, started="t", command=["x"])]
        recs.append(rec)
    Sweep(
        dir=sw,
        preset="quickstart-influence",
        preset_path="quickstart-influence",
        grid={},
        grid_file=None,
        overrides=[],
        engine="local",
        cases=recs,
    ).save()
    assert shutil.which  # (the runs above are real run directories: config.yaml, metrics, trace)
    return sw


def screen(*args: str, width: int = 120) -> str:
    """What `archer collect` prints in a terminal `width` columns wide (colours stripped)."""
    import re

    r = runner.invoke(
        app, ["collect", *args], catch_exceptions=False, env={"COLUMNS": str(width), "FORCE_COLOR": "1"}
    )
    assert r.exit_code == 0, r.output
    return re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)


def test_sweep_table_is_readable_at_120_columns(sweep3):
    text = screen(str(sweep3))
    lines = text.splitlines()
    assert max(len(x) for x in lines) <= 120
    assert "…" not in text  # nothing cut
    head = next(x for x in lines if x.lstrip().startswith("run"))
    assert head.split() == [
        "run",
        "influence.enable",
        "hessian_mode",
        "reward",
        "val",
        "acc",
        "s/step",
        "auc",
        "spearman",
    ]
    rows = {
        x.split()[0]: x.split()
        for x in lines
        if x.split() and x.split()[0] in ("baseline", "inverse-ef5c5e7a", "identity-e788a03a")
    }
    assert list(rows) == ["baseline", "inverse-ef5c5e7a", "identity-e788a03a"]  # sweep order
    # every cell whole: settings, reward start→end, val accuracy start→end, s/step, quality
    assert rows["baseline"] == ["baseline", "false", "-", "0.5→0.625", "0.25→0.5", "2", "-", "-"]
    assert rows["inverse-ef5c5e7a"] == [
        "inverse-ef5c5e7a",
        "true",
        "inverse",
        "0.5→0.625",
        "0.25→0.5",
        "4",
        "0.792",
        "-",
    ]
    assert rows["identity-e788a03a"] == [
        "identity-e788a03a",
        "true",
        "identity",
        "0.5→0.625",
        "0.25→0.5",
        "3",
        "0.833",
        "0.982",
    ]
    assert "spearman vs inverse-ef5c5e7a" in text
    assert "status" not in head  # every run finished: no status column, no reasons


def test_columns_and_sort_choose_what_the_screen_shows(sweep3, runs):
    text = screen(str(sweep3), "--columns", "run,auc,rollout_s", "--sort=-auc")
    body = [x.split() for x in text.splitlines() if x.split() and x.split()[0].startswith(("b", "i"))]
    assert [r[0] for r in body] == ["identity-e788a03a", "inverse-ef5c5e7a", "baseline"]  # none last
    assert body[0] == ["identity-e788a03a", "0.833", "0.75"]
    text = screen(str(sweep3), "-c", "default", "-c", "*_s", width=200)  # a glob adds what it matches
    head = next(x for x in text.splitlines() if x.lstrip().startswith("run")).split()
    assert head[-5:] == ["spearman", "rollout_s", "update_s", "influence_s", "infl_solve_s"]
    wide = screen(str(sweep3), "--columns", "all", width=400)
    assert "reward_best" in wide and "infl_solve_s" in wide
    # runs that did not finish get a status column and a line saying why
    text = screen(*map(str, paths(runs)), width=160)
    assert "status" in text and "crashed: failed, unexpected error: RuntimeError: CUDA error" in text
    # files keep every column unless asked; --columns and --sort apply to them too
    r = invoke(str(sweep3), "--format", "csv", "--columns", "run,reward,auc", "--sort", "auc")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == ["run", "reward_start", "reward_final", "auc"]
    assert [x["run"] for x in rows] == ["inverse-ef5c5e7a", "identity-e788a03a", "baseline"]
    r = invoke(str(sweep3), "--format", "json")
    assert {"reward_start", "reward_final", "val_acc_start", "step_s", "path"} <= set(json.loads(r.stdout)[0])


def test_unknown_columns_and_sort_keys_are_usage_errors(sweep3):
    r = runner.invoke(app, ["collect", str(sweep3), "--columns", "run,aucc"])
    assert r.exit_code == 2 and "no such column" in r.output and "did you mean auc" in r.output
    r = runner.invoke(app, ["collect", str(sweep3), "--sort", "-rewrd"])
    assert r.exit_code == 2 and "--sort -rewrd" in r.output and "reward" in r.output
    r = runner.invoke(app, ["collect", str(sweep3), "--columns", "zz*"])
    assert r.exit_code == 2 and "no column matches" in r.output
