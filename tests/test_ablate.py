"""`archer ablate`: grid expansion and ids, validation before running, the sweep runner (failures,
out-of-memory retries, Ctrl-C, --max-failures, resume) and a real sweep on the local engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from small_run import SMALL_INFLUENCE_PRESET, SMALL_RUN
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.config.compose import parse_override
from archer.core.sweep import (
    OFFLOAD_OVERRIDE,
    SWEEP_FILE,
    Attempt,
    Case,
    Sweep,
    SweepInterrupted,
    SweepRunner,
    case_id,
    cases_to_run,
    expand_grid,
    failure_reason,
    is_oom,
)
from archer.core.sweep.grid import format_value
from archer.core.sweep.plan import new_sweep, plan_cases
from archer.core.sweep.runner import train_command
from archer.errors import ArcherError, ConfigError

runner = CliRunner()

SMALL = [
    *SMALL_RUN,
    "trainer.total_steps=2",
]


def settings(cases: list[Case]) -> list[dict]:
    return [c.settings for c in cases]


# --------------------------------------------------------------------------- grid expansion
def test_product_times_paired_values_with_baseline_first():
    grid = {
        "influence.hessian_mode": ["inverse", "identity"],
        "_": [
            {"influence.output_function": "training_loss"},
            {"influence.output_function": "log_prob", "influence.contrastive_agg": "mean"},
        ],
    }
    cases = expand_grid(grid)
    assert (
        cases[0].baseline and cases[0].id == "baseline" and cases[0].settings == {"influence.enable": False}
    )
    assert settings(cases[1:]) == [
        {"influence.hessian_mode": "inverse", "influence.output_function": "training_loss"},
        {
            "influence.hessian_mode": "inverse",
            "influence.output_function": "log_prob",
            "influence.contrastive_agg": "mean",
        },
        {"influence.hessian_mode": "identity", "influence.output_function": "training_loss"},
        {
            "influence.hessian_mode": "identity",
            "influence.output_function": "log_prob",
            "influence.contrastive_agg": "mean",
        },
    ]
    assert len({c.id for c in cases}) == 5


def test_two_axes_form_a_product_and_scalars_are_shared():
    cases = expand_grid(
        {
            "influence.hessian_mode": ["inverse", "identity"],
            "influence.max_modules": [2, 4],
            "influence.storage_dtype": "fp32",
        }
    )
    assert len(cases) == 1 + 4
    assert {
        (c.settings["influence.hessian_mode"], c.settings["influence.max_modules"]) for c in cases[1:]
    } == {("inverse", 2), ("inverse", 4), ("identity", 2), ("identity", 4)}
    assert all(c.settings["influence.storage_dtype"] == "fp32" for c in cases[1:])


def test_nested_mappings_mean_dotted_keys():
    nested = expand_grid({"influence": {"hessian_mode": ["inverse", "identity"]}})
    dotted = expand_grid({"influence.hessian_mode": ["inverse", "identity"]})
    assert settings(nested) == settings(dotted) and [c.id for c in nested] == [c.id for c in dotted]


def test_ids_are_stable_and_independent_of_key_order_and_other_cases():
    a = expand_grid({"_": [{"influence.hessian_mode": "identity", "influence.max_modules": 2}]})[1]
    b = expand_grid({"influence.max_modules": [2, 8], "influence.hessian_mode": ["identity"]})[1]
    assert a.settings == b.settings and a.id == b.id
    assert a.id == case_id({"influence.max_modules": 2, "influence.hessian_mode": "identity"})
    assert a.id.startswith("identity-max_modules-2-") and len(a.id.rsplit("-", 1)[1]) == 8
    # values that print alike but differ get different ids (the hash covers the typed value)
    assert case_id({"k": 1}) != case_id({"k": "1"}) != case_id({"k": True})


def test_long_settings_get_a_short_slug_but_unique_ids():
    s1 = {"influence.module_name_filter": "(mlp\\.down_proj|self_attn\\.o_proj|self_attn\\.q_proj)$"}
    s2 = {"influence.module_name_filter": "(mlp\\.down_proj|self_attn\\.o_proj|self_attn\\.k_proj)$"}
    assert case_id(s1) != case_id(s2)
    assert len(case_id(s1)) <= 48 + 9
    assert "/" not in case_id(s1) and "|" not in case_id(s1) and "\\" not in case_id(s1)


def test_a_grid_case_equal_to_the_baseline_runs_once():
    cases = expand_grid({"influence.enable": [False, True]})
    assert settings(cases) == [{"influence.enable": False}, {"influence.enable": True}]
    assert cases[0].baseline


@pytest.mark.parametrize(
    "grid, words",
    [
        (
            {"_": [{"influence.max_modules": 2}, {"influence.max_modules": 2}]},
            ["cases 1 and 2", "same settings"],
        ),
        (
            {"influence.max_modules": [2, 4], "_": [{"influence.max_modules": 8}]},
            ["both an axis", "'_' entry 1"],
        ),
        ({"influence.hessian_mode": ["inverse", "inverse"]}, ["lists inverse twice"]),
        ({"influence.hessian_mode": []}, ["empty list"]),
        ({"_": {"influence.max_modules": 2}}, ["non-empty list of mappings"]),
        ({"_": [{"influence.max_modules": 2}, "identity"]}, ["entry 2 must be a non-empty mapping"]),
        ({"influence": {"_": [{"max_modules": 2}]}}, ["only at the top level"]),
        ({"influence.enable": [False]}, ["no cases besides the baseline"]),
    ],
)
def test_bad_grids_are_config_errors_that_say_what_is_wrong(grid, words):
    with pytest.raises(ConfigError) as e:
        expand_grid(grid)
    for w in words:
        assert w in e.value.message


@pytest.mark.parametrize(
    "value",
    [
        "inverse",
        "(mlp\\.down_proj|o_proj)$",
        "null",
        "1e-4",
        "a: b",
        "true",
        0.1,
        -1,
        True,
        None,
        [1, 2],
        ["a.parquet", "b c.parquet"],
        "x=y",
        "${seed}x",
    ],
)
def test_setting_values_survive_the_override_grammar(value):
    assert parse_override(f"k.v={format_value(value)}")[2] == value


def test_grid_cases_are_composed_and_bad_keys_name_the_case():
    cases = expand_grid({"influence.hessian_mod": ["identity"]})
    with pytest.raises(ConfigError) as e:
        plan_cases("quickstart-influence", [], cases)
    assert "grid case identity-" in e.value.message and "influence.hessian_mod" in e.value.message
    assert "influence.hessian_mode" in e.value.message  # the suggestion from compose


def test_cases_that_resolve_to_the_same_config_are_refused():
    # both values are already the preset's, so the two cases are the same experiment
    cases = expand_grid({"_": [{"influence.hessian_mode": "inverse"}, {"influence.reg_lambda": 0.0}]})
    with pytest.raises(ConfigError, match="resolve to the same config"):
        plan_cases("quickstart-influence", [], cases)


# --------------------------------------------------------------------------- the command, without running
def write_grid(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path


def test_bad_key_in_grid_exits_2_before_anything_runs(tmp_path):
    grid = write_grid(
        tmp_path / "g.yaml", {"influence.hessian_mode": ["identity"], "_": [{"influence.max_modulez": 2}]}
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "archer",
            "ablate",
            "--preset",
            "quickstart-influence",
            "--grid",
            str(grid),
            "--out",
            str(tmp_path / "sw"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "influence.max_modulez" in r.stderr and "grid case" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "sw").exists()


def test_dry_run_lists_cases_with_ids_and_run_dirs(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", {"influence.hessian_mode": ["inverse", "identity"]})
    out = tmp_path / "sw"
    r = runner.invoke(
        app,
        [
            "ablate",
            "--preset",
            "quickstart-influence",
            "--grid",
            str(grid),
            "--out",
            str(out),
            "--dry-run",
            "trainer.total_steps=3",
        ],
        catch_exceptions=False,
        env={"COLUMNS": "200"},
    )
    assert r.exit_code == 0, r.output
    ids = [c.id for c in expand_grid({"influence.hessian_mode": ["inverse", "identity"]})]
    for cid in ids:
        assert cid in r.output and str(out / cid) in r.output
    assert "influence.enable=false" in r.output and "3 case(s)" in r.output
    assert not out.exists()


def test_new_sweep_refuses_a_directory_that_holds_one_and_resume_needs_out(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", {"influence.hessian_mode": ["identity"]})
    out = tmp_path / "sw"
    out.mkdir()
    (out / SWEEP_FILE).write_text("{}")
    r = runner.invoke(
        app, ["ablate", "--preset", "quickstart-influence", "--grid", str(grid), "--out", str(out)]
    )
    assert r.exit_code == 2 and "already holds a sweep" in r.output
    r = runner.invoke(app, ["ablate", "--resume"])
    assert r.exit_code == 2 and "--resume needs --out" in r.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    r = runner.invoke(
        app,
        ["ablate", "--preset", "quickstart-influence", "--grid", str(grid), "--out", str(tmp_path / "full")],
    )
    assert r.exit_code == 2 and "not empty" in r.output
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_help_of_ablate_and_collect_imports_nothing_heavy():
    code = (
        "import sys\nfrom archer.cli.main import app\n"
        "for cmd in ('ablate', 'collect'):\n"
        "    try:\n        app([cmd, '--help'], prog_name='archer')\n    except SystemExit as e:\n        "
        "assert e.code == 0\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'pyarrow', 'omegaconf', 'matplotlib', 'plotext') if "
        "m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("HEAVY=") and "--grid" in r.stdout and "--plot" in r.stdout


# --------------------------------------------------------------------------- the runner, with fake cases
FAKE = r"""
import os, signal, sys, time
mode, out, offload = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "config.yaml"), "w").write("trainer: {total_steps: 2}\n")
if mode == "oom" and not offload:
    print("step 1/2 ...")
    print("Error: unexpected error: OutOfMemoryError: CUDA out of memory. "
          "Tried to allocate 20.00 GiB", file=sys.stderr)
    sys.exit(1)
if mode == "oom-always":
    print("RuntimeError: CUDA out of memory", file=sys.stderr); sys.exit(1)
if mode == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "crash":
    print("Traceback (most recent call last):\n"
          "ValueError: influence.module_name_filter matches nothing", file=sys.stderr)
    sys.exit(1)
if mode == "slow":
    def on_int(*a):
        print("interrupted: saving a checkpoint", flush=True); sys.exit(1)
    signal.signal(signal.SIGINT, on_int)
    print("started", flush=True)
    time.sleep(60)
with open(os.path.join(out, "metrics.jsonl"), "a") as f:
    for s in (1, 2):
        f.write('{"step": %d, "time/step": 0.5}\n' % s)
print("done")
"""


def fake_sweep(tmp_path: Path, modes: dict[str, str], influence: dict[str, bool] | None = None) -> Sweep:
    cases = [Case(settings={"fake.mode": m, "fake.name": name}) for name, m in modes.items()]
    sweep = Sweep(
        dir=tmp_path / "sw",
        preset="fake",
        preset_path="fake",
        grid={},
        grid_file=None,
        overrides=[],
        engine="local",
        cases=[],
    )
    from archer.core.sweep.state import CaseRecord

    for name, c in zip(modes, cases):
        sweep.cases.append(
            CaseRecord(
                id=name,
                settings=c.settings,
                overrides=c.overrides,
                run_dir=name,
                influence=(influence or {}).get(name, True),
                total_steps=2,
            )
        )
    (tmp_path / "fake.py").write_text(FAKE)
    return sweep


def fake_command(tmp_path: Path):
    def command(sweep: Sweep, rec, overrides: list[str], resume: bool) -> list[str]:
        offload = "1" if OFFLOAD_OVERRIDE in overrides else "0"
        mode = rec.settings["fake.mode"]
        if resume:
            mode = "ok"  # the continued run finishes
        return [
            sys.executable,
            str(tmp_path / "fake.py"),
            mode,
            str(sweep.case_dir(rec)),
            offload,
            *overrides,
        ]

    return command


class Recorder:
    """A display that checks sweep.json is whole and current at every event."""

    def __init__(self, interrupt_on: str | None = None):
        self.events: list[tuple[str, str | None]] = []
        self.interrupt_on = interrupt_on

    def event(self, sweep, rec, kind, text=""):
        self.events.append((kind, rec.id if rec else None))
        saved = json.loads(sweep.path.read_text())
        if rec is not None:
            assert {c["id"]: c["status"] for c in saved["cases"]}[rec.id] == rec.status
        if kind == "progress" and rec is not None and rec.id == self.interrupt_on:
            # "Ctrl-C" once the case is up (its SIGINT handler installed), as a person would
            if "started" in (sweep.case_dir(rec) / "train.log").read_text():
                self.interrupt_on = None
                raise KeyboardInterrupt


def test_failures_are_recorded_with_their_reason_and_do_not_stop_the_sweep(tmp_path):
    sweep = fake_sweep(tmp_path, {"a": "ok", "b": "crash", "c": "ok"})
    rec = Recorder()
    SweepRunner(sweep, command=fake_command(tmp_path), display=rec, poll_seconds=0.05).run(["a", "b", "c"])
    saved = Sweep.load(sweep.dir)
    assert [c.status for c in saved.cases] == ["done", "failed", "done"]
    b = saved.case("b")
    assert b.reason == "ValueError: influence.module_name_filter matches nothing"
    assert len(b.attempts) == 1 and not b.oom and b.attempts[0].returncode == 1
    assert saved.status == "finished" and saved.case("a").steps == 2 and saved.case("a").step_seconds == 0.5
    assert "ValueError" in (sweep.dir / "b" / "train.log").read_text()
    assert ("done", "a") in rec.events and ("failed", "b") in rec.events


def test_out_of_memory_is_retried_once_with_grad_offload(tmp_path):
    sweep = fake_sweep(
        tmp_path, {"oom": "oom", "always": "oom-always", "base": "oom-always"}, influence={"base": False}
    )
    SweepRunner(sweep, command=fake_command(tmp_path), poll_seconds=0.05).run(["oom", "always", "base"])
    saved = Sweep.load(sweep.dir)
    oom = saved.case("oom")
    assert oom.status == "done" and oom.oom and len(oom.attempts) == 2
    assert (
        oom.attempts[0].oom and not oom.attempts[0].offload and "CUDA out of memory" in oom.attempts[0].reason
    )
    assert oom.attempts[1].offload and OFFLOAD_OVERRIDE in oom.attempts[1].command
    assert "CUDA out of memory" in (sweep.dir / "oom" / "train.attempt1.log").read_text()
    assert "done" in (sweep.dir / "oom" / "train.log").read_text()
    always = saved.case("always")  # retried once, then given up
    assert (
        always.status == "failed"
        and len(always.attempts) == 2
        and always.reason == "RuntimeError: CUDA out of memory"
    )
    base = saved.case("base")  # influence off: offloading cannot help, so no retry
    assert base.status == "failed" and len(base.attempts) == 1 and base.oom


def test_a_case_that_already_offloads_is_not_retried(tmp_path):
    sweep = fake_sweep(tmp_path, {"a": "oom-always"})
    sweep.cases[0].offload = True
    SweepRunner(sweep, command=fake_command(tmp_path), poll_seconds=0.05).run(["a"])
    assert len(sweep.cases[0].attempts) == 1 and sweep.cases[0].status == "failed"


def test_the_real_command_is_archer_train_with_the_case_overrides(tmp_path):
    sweep = fake_sweep(tmp_path, {"a": "ok"})
    rec = sweep.cases[0]
    cmd = train_command(sweep, rec, ["trainer.total_steps=2", *rec.overrides, OFFLOAD_OVERRIDE], False)
    assert cmd[:4] == [sys.executable, "-m", "archer", "train"]
    assert cmd[cmd.index("--out") + 1] == str((sweep.dir / "a").resolve())
    assert cmd[-4:] == ["trainer.total_steps=2", "fake.mode=ok", "fake.name=a", OFFLOAD_OVERRIDE]
    resumed = train_command(sweep, rec, rec.overrides, True)
    assert resumed[4:] == [
        "--resume",
        "--out",
        str((sweep.dir / "a").resolve()),
    ]  # the run's config.yaml has the rest


def test_oom_classification():
    assert is_oom(["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"], 1)
    assert is_oom(["MemoryError"], 1) and is_oom(["HIP out of memory"], 1)
    assert is_oom([], -9)  # the kernel's OOM killer
    assert not is_oom(["ValueError: bad", "influence/peak_memory_estimate_mb 12"], 1)
    assert "SIGKILL" in failure_reason([], -9) and "out of memory" in failure_reason([], -9)
    assert failure_reason(["x", "Error: no trace", "Hint: do y"], 1) == "no trace"
    assert failure_reason(["only output"], 3) == "exited with code 3: only output"


def test_sigkilled_case_is_treated_as_out_of_memory_and_retried(tmp_path):
    sweep = fake_sweep(tmp_path, {"k": "killed"})
    SweepRunner(sweep, command=fake_command(tmp_path), poll_seconds=0.05).run(["k"])
    k = sweep.cases[0]
    assert k.attempts[0].returncode == -9 and k.attempts[0].oom and "SIGKILL" in k.attempts[0].reason
    assert (
        len(k.attempts) == 2 and k.attempts[1].offload
    )  # the retry hits SIGKILL again (the fake ignores offload)
    assert k.status == "failed"


def test_max_failures_stops_the_sweep_and_leaves_the_rest_pending(tmp_path):
    sweep = fake_sweep(tmp_path, {"a": "crash", "b": "ok", "c": "ok"})
    with pytest.raises(ArcherError, match="stopped after 1 failed case"):
        SweepRunner(sweep, command=fake_command(tmp_path), poll_seconds=0.05, max_failures=1).run(
            ["a", "b", "c"]
        )
    saved = Sweep.load(sweep.dir)
    assert [c.status for c in saved.cases] == ["failed", "pending", "pending"] and saved.status == "stopped"
    assert cases_to_run(saved) == (["a", "b", "c"], [])


def test_ctrl_c_stops_the_running_case_and_resume_continues_it(tmp_path):
    sweep = fake_sweep(tmp_path, {"a": "ok", "b": "slow", "c": "ok"})
    with pytest.raises(SweepInterrupted) as e:
        SweepRunner(
            sweep, command=fake_command(tmp_path), display=Recorder(interrupt_on="b"), poll_seconds=0.05
        ).run(["a", "b", "c"])
    assert e.value.exit_code == 130 and "--resume" in e.value.hint
    saved = Sweep.load(sweep.dir)
    assert [c.status for c in saved.cases] == [
        "done",
        "interrupted",
        "pending",
    ] and saved.status == "interrupted"
    assert "interrupted: saving a checkpoint" in (sweep.dir / "b" / "train.log").read_text()  # it got SIGINT
    b = saved.case("b")
    assert b.attempts[0].interrupted and b.attempts[0].pid is not None
    a_ended = saved.case("a").ended

    todo, skipped = cases_to_run(saved)
    assert todo == ["b", "c"] and skipped == ["a"]
    SweepRunner(saved, command=fake_command(tmp_path), poll_seconds=0.05).run(todo)
    again = Sweep.load(sweep.dir)
    assert [c.status for c in again.cases] == ["done", "done", "done"]
    assert again.case("b").attempts[1].resumed  # continued with archer train --resume
    assert again.case("a").ended == a_ended and len(again.case("a").attempts) == 1


def test_ctrl_c_between_cases_leaves_a_consistent_sweep(tmp_path):
    class StopAfterFirst(Recorder):
        def event(self, sweep, rec, kind, text=""):
            super().event(sweep, rec, kind, text)
            if kind == "done":
                raise KeyboardInterrupt

    sweep = fake_sweep(tmp_path, {"a": "ok", "b": "ok"})
    with pytest.raises(SweepInterrupted):
        SweepRunner(sweep, command=fake_command(tmp_path), display=StopAfterFirst(), poll_seconds=0.05).run(
            ["a", "b"]
        )
    saved = Sweep.load(sweep.dir)
    assert [c.status for c in saved.cases] == ["done", "pending"] and saved.status == "interrupted"


def test_resume_refuses_while_a_case_of_a_killed_sweep_still_runs(tmp_path):
    from archer.core.sweep.runner import check_no_orphans

    sweep = fake_sweep(tmp_path, {"a": "ok"})
    rec = sweep.cases[0]
    case_dir = str(sweep.case_dir(rec).resolve())
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", case_dir])
    try:
        for _ in range(500):  # /proc/PID/cmdline reads empty for a moment after the exec
            if Path(f"/proc/{orphan.pid}/cmdline").read_bytes():
                break
            time.sleep(0.01)
        rec.status = "running"
        rec.attempts = [Attempt(n=1, started="t", command=["x"], pid=orphan.pid)]
        with pytest.raises(ArcherError, match=f"still running as process {orphan.pid}"):
            check_no_orphans(sweep)
    finally:
        orphan.kill()
        orphan.wait()
    check_no_orphans(sweep)  # gone: fine
    rec.attempts[0].pid = os.getpid()  # alive, but not working on this case
    check_no_orphans(sweep)


def test_sweep_file_round_trips(tmp_path):
    cases = expand_grid({"influence.hessian_mode": ["identity"]})
    planned = plan_cases("quickstart-influence", ["trainer.total_steps=3"], cases)
    sweep = new_sweep(
        tmp_path / "sw", "quickstart-influence", ["trainer.total_steps=3"], {"x": [1]}, "g.yaml", planned
    )
    sweep.save()
    back = Sweep.load(tmp_path / "sw")
    assert back.to_dict()["cases"] == sweep.to_dict()["cases"]
    assert [c.influence for c in back.cases] == [False, True] and back.cases[1].total_steps == 3
    assert not list((tmp_path / "sw").glob(".*tmp*"))  # written through a temp file, nothing left behind


# --------------------------------------------------------------------------- a real sweep
@pytest.mark.slow
def test_real_sweep_on_the_local_engine_records_a_failure_and_resume_reruns_only_it(tmp_path):
    grid = write_grid(
        tmp_path / "grid.yaml",
        {
            "_": [
                {"influence.hessian_mode": "identity"},
                {
                    "influence.module_name_filter": "no_such_module$"
                },  # valid config; fails when the tracer starts
            ]
        },
    )
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "archer",
        "ablate",
        "--preset",
        SMALL_INFLUENCE_PRESET,
        "--grid",
        str(grid),
        "--out",
        str(out),
        *SMALL,
        f"trainer.cache_dir={tmp_path / 'cache'}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 of 3 case(s) failed" in r.stderr
    sweep = Sweep.load(out)
    ids = [c.id for c in sweep.cases]
    assert ids[0] == "baseline" and len(ids) == 3
    base, ident, bad = sweep.cases
    assert (base.status, ident.status, bad.status) == ("done", "done", "failed")
    assert "matches no nn.Linear module" in bad.reason and not bad.oom and len(bad.attempts) == 1
    assert base.steps == 2 and ident.steps == 2
    for c, key, value in ((base, "enable", False), (ident, "hessian_mode", "identity")):
        cfg = yaml.safe_load((out / c.run_dir / "config.yaml").read_text())
        assert cfg["influence"][key] == value
        assert (out / c.run_dir / "train.log").exists() and (
            out / c.run_dir / "trace" / "manifest.jsonl"
        ).exists()
    log_mtimes = {c.id: (out / c.run_dir / "train.log").stat().st_mtime_ns for c in (base, ident)}

    r2 = subprocess.run(
        [sys.executable, "-m", "archer", "ablate", "--resume", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r2.returncode == 1, r2.stdout + r2.stderr
    assert "2 finished case(s) skipped, 1 to run" in r2.stderr
    again = Sweep.load(out)
    for old, new in zip((base, ident), again.cases[:2]):
        assert new.status == "done" and len(new.attempts) == 1 and new.ended == old.ended
        assert (out / new.run_dir / "train.log").stat().st_mtime_ns == log_mtimes[new.id]
    bad2 = again.cases[2]
    assert bad2.status == "failed" and len(bad2.attempts) == 2
    assert (out / bad2.run_dir / "train.attempt1.log").exists()

    from archer.core.collect import build_table

    t = build_table([out])
    assert [(r["run"], r["status"]) for r in t.rows] == [
        (base.id, "finished"),
        (ident.id, "finished"),
        (bad.id, "failed"),
    ]
    assert t.rows[1]["influence.hessian_mode"] == "identity" and t.rows[0]["influence.hessian_mode"] is None
    assert t.rows[2]["reason"] == bad2.reason and t.rows[2]["attempts"] == 2
