"""The archer command: exit codes, messages, lazy imports, presets commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from archer.cli.main import app

runner = CliRunner()


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_help_imports_no_heavy_modules():
    code = (
        "import sys\n"
        "from archer.cli.main import app\n"
        "try:\n    app(['--help'], prog_name='archer')\nexcept SystemExit as e:\n    assert e.code == 0, "
        "e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'verl', 'ray', 'omegaconf', 'pyarrow') if m in "
        "sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY=\n" in r.stdout or r.stdout.strip().endswith("HEAVY=")
    assert "train" in r.stdout and "presets" in r.stdout


def test_no_arguments_prints_help():
    r = run()
    assert r.returncode == 0
    assert "Usage" in r.stdout and "train" in r.stdout


def test_short_help_flag():
    r = runner.invoke(app, ["train", "-h"])
    assert r.exit_code == 0
    assert "--preset" in r.output and "Examples" in r.output


def test_misspelled_preset_exits_2_with_suggestion():
    r = run("train", "--preset", "quikstart")
    assert r.returncode == 2
    assert "quickstart" in r.stderr and "Traceback" not in r.stderr


def test_unknown_key_exits_2_and_names_it():
    r = run("train", "--preset", "quickstart", "trainer.nonexistent=1", "--dry-run")
    assert r.returncode == 2
    assert "trainer.nonexistent" in r.stderr and "Did you mean" in r.stderr


def test_wrong_type_exits_2_and_names_key_and_type():
    r = runner.invoke(app, ["train", "--preset", "quickstart", "rollout.n=many", "--dry-run"])
    assert r.exit_code == 2
    assert "'rollout.n' expects int" in r.stderr and "many" in r.stderr


def test_unknown_option_is_a_usage_error():
    r = runner.invoke(app, ["train", "--preset", "quickstart", "--bogus"])
    assert r.exit_code == 2
    assert "--bogus" in r.stderr and "archer train --help" in r.stderr


def test_dry_run_prints_config_and_output_dir(tmp_path):
    out = tmp_path / "run1"
    r = runner.invoke(
        app, ["train", "--preset", "quickstart", "trainer.total_steps=3", "--out", str(out), "--dry-run"]
    )
    assert r.exit_code == 0, r.output
    head = r.stdout.split("\npreset")[0]
    data = yaml.safe_load(head)
    assert data["trainer"]["total_steps"] == 3
    assert str(out) in r.stdout
    assert not out.exists()  # a dry run writes nothing


def test_dry_run_warns_about_required_values():
    r = runner.invoke(app, ["train", "--preset", "math", "--dry-run"])
    assert r.exit_code == 0
    assert "model.path" in r.stderr


def test_train_refuses_incomplete_config():
    r = runner.invoke(app, ["train", "--preset", "math"])
    assert r.exit_code == 2
    assert "model.path" in r.stderr


def test_resume_needs_out():
    r = runner.invoke(app, ["train", "--resume"])
    assert r.exit_code == 2 and "--out" in r.stderr


def test_presets_ls_lists_shipped_presets():
    r = runner.invoke(app, ["presets", "ls", "--json"])
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["quickstart"]["engine"] == "local"
    assert rows["math"]["engine"] == "verl"
    assert rows["math"]["algorithm"].startswith("grpo")
    table = runner.invoke(app, ["presets", "ls"])
    assert "quickstart" in table.stdout and "math" in table.stdout


def test_presets_show_resolved_is_valid_yaml():
    r = runner.invoke(app, ["presets", "show", "math", "--resolved"])
    assert r.exit_code == 0
    data = yaml.safe_load(r.stdout)
    assert data["rollout"]["n"] == 16 and data["actor"]["ppo_epochs"] == 3
    assert data["actor"]["kl_loss_type"] == "low_var_kl" and data["actor"]["optim"]["lr"] == 1e-6


def test_presets_show_explain_lists_keys():
    r = runner.invoke(app, ["presets", "show", "quickstart", "--explain"])
    assert r.exit_code == 0
    assert "actor.clip_ratio_high" in r.stdout


def _explain_lines(*args: str) -> dict[str, str]:
    r = runner.invoke(app, ["presets", "show", *args, "--explain"])
    assert r.exit_code == 0, r.output
    return {ln.split(" = ", 1)[0]: ln for ln in r.stdout.splitlines() if " = " in ln and "#" in ln}


def test_explain_marks_the_keys_the_presets_engine_ignores():
    verl = _explain_lines("math-influence")
    for key in (
        "rollout.compile_decode",
        "model.tiny.num_layers",
        "warmup.steps",
        "data.synth.n",
    ):
        assert "[ignored on verl:" in verl[key], key
    for key in ("rollout.n", "actor.clip_ratio_high", "influence.enable", "trainer.logging.wandb"):
        assert "ignored" not in verl[key], key
    # archer's agent loop runs inside verl's, and the driver's warm-up honours the thread count
    agent = _explain_lines("arpo-verl-smoke")
    for key in (
        "agent.enable",
        "agent.branch_probability",
        "agent.tools.python.timeout_s",
        "trainer.num_threads",
    ):
        assert "ignored" not in agent[key], key
    # the tiny model and the synthetic task are read where model.path / data.train_files are unset
    own = _explain_lines("math-influence", "model.path=null", "data.train_files=[]")
    assert "ignored" not in own["model.tiny.num_layers"] and "ignored" not in own["data.synth.n"]
    local = _explain_lines("quickstart")
    assert "ignored" not in local["rollout.compile_decode"] and "ignored" not in local["warmup.steps"]


def test_explain_prints_the_verl_section_as_yaml():
    r = runner.invoke(app, ["presets", "show", "math-influence", "--explain"])
    assert r.exit_code == 0, r.output
    text = r.stdout.split("# verl section: verl's own keys, passed to verl as written\n", 1)[1]
    assert yaml.safe_load(text)["verl"]["trainer"]["n_gpus_per_node"] == 8
    assert "verl = {" not in r.stdout  # not a Python dict repr


def test_presets_cp_and_force(tmp_path):
    dest = tmp_path / "mine.yaml"
    r = runner.invoke(app, ["presets", "cp", "quickstart", str(dest)])
    assert r.exit_code == 0 and dest.exists()
    again = runner.invoke(app, ["presets", "cp", "quickstart", str(dest)])
    assert again.exit_code == 2 and "--force" in again.stderr
    forced = runner.invoke(app, ["presets", "cp", "quickstart", str(dest), "--force"])
    assert forced.exit_code == 0
    into_dir = runner.invoke(app, ["presets", "cp", "math", str(tmp_path)])
    assert into_dir.exit_code == 0 and (tmp_path / "math.yaml").exists()


def test_presets_validate(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("extends: quickstart\ntrainer:\n  total_steps: 5\n")
    r = runner.invoke(app, ["presets", "validate", str(good)])
    assert r.exit_code == 0 and "well-formed" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: quickstart\nrollout:\n  temprature: 0.5\n")
    r = runner.invoke(app, ["presets", "validate", str(bad)])
    assert r.exit_code == 2 and "rollout.temperature" in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("rollout: [unclosed\n")
    r = runner.invoke(app, ["presets", "validate", str(broken)])
    assert r.exit_code == 2 and "not valid YAML" in r.stderr


def test_env_json_reports_engines():
    r = runner.invoke(app, ["env", "--json"])
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["packages"]["torch"]
    assert set(info["missing"]) == {"local", "verl", "view"}
    assert info["missing"]["local"] == []


def test_unexpected_errors_are_short_unless_debug(monkeypatch):
    import archer.core.environment as env_cmd

    def boom(**_):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(env_cmd, "collect", boom)
    r = runner.invoke(app, ["env"])
    assert r.exit_code == 1
    assert "unexpected error" in r.stderr and "kaboom" in r.stderr and "ARCHER_DEBUG" in r.stderr
    assert "Traceback" not in r.stderr
    monkeypatch.setenv("ARCHER_DEBUG", "1")
    r = runner.invoke(app, ["env"])
    assert isinstance(r.exception, RuntimeError)


@pytest.mark.parametrize("args", [["data", "-h"], ["presets", "-h"], ["env", "-h"]])
def test_group_help(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "Usage" in r.stdout


def test_env_hints_keep_their_brackets(monkeypatch):
    """Install hints such as pip install -e '.[verl,vllm]' must not be eaten as Rich markup."""
    import archer.core.environment as env_cmd

    real = env_cmd.collect

    def gaps(**kw):
        info = real(**kw)
        info["missing"]["verl"] = ["vllm"]
        return info

    monkeypatch.setattr(env_cmd, "collect", gaps)
    r = runner.invoke(app, ["env"])
    assert r.exit_code == 0, r.output
    text = r.stdout.replace("\n", "")
    assert "pip install -e '.[verl]'" in text and "'.[verl,vllm]'" in text


def _all_command_paths() -> list[list[str]]:
    import typer.main

    paths = []

    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_help_placeholders_follow_the_fields_conventions():
    """No Python types in help (<bool>, <list[str]>, <list[Path]>) nor doubled brackets
    ([[KEY=VALUE]...]...): flags show no placeholder, options an upper-case one, arguments NAME..."""
    paths = _all_command_paths()
    assert ["train"] in paths and ["presets", "show"] in paths and len(paths) > 12
    for path in [[], *paths]:
        r = runner.invoke(app, [*path, "-h"], env={"COLUMNS": "120"})
        assert r.exit_code == 0, (path, r.output)
        for bad in ("<bool>", "<list", "<str>", "<int>", "<float>", "<path>", "[[", "]...]"):
            assert bad not in r.stdout, (path, bad)
    train = runner.invoke(app, ["train", "-h"], env={"COLUMNS": "120"}).stdout
    assert "Usage: archer train [OPTIONS] [KEY=VALUE...]" in train
    assert "KEY=VALUE..." in train and " PATH " in train and " TEXT " in train
    ev = runner.invoke(app, ["eval", "-h"], env={"COLUMNS": "120"}).stdout
    assert "[local|vllm]" in ev and "INTEGER" in ev and "FLOAT" in ev
    assert "Usage: archer collect [OPTIONS] PATHS..." in runner.invoke(app, ["collect", "-h"]).stdout


def _complete(words: str, cword: int) -> list[str]:
    env = {**os.environ, "_ARCHER_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    r = subprocess.run([sys.executable, "-m", "archer"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_shell_completion_is_installed_and_completes_presets_and_keys():
    r = runner.invoke(app, ["--help"])
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout
    # the script bash sources (what --show-completion prints once it has detected the user's shell
    # from its parent processes, which a test run under nohup or a CI runner may not have)
    script = subprocess.run(
        [sys.executable, "-m", "archer"],
        env={**os.environ, "_ARCHER_COMPLETE": "source_bash"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert script.returncode == 0 and "_ARCHER_COMPLETE=complete_bash" in script.stdout
    presets = _complete("archer train --preset quicks", 3)
    assert "quickstart" in presets and all(p.startswith("quicks") for p in presets)
    assert _complete("archer train rollout.temp", 2) == ["rollout.temperature="]
    assert _complete("archer presets show quickstart ~warmup.ste", 4) == ["~warmup.steps"]
    assert "train" in _complete("archer tr", 1)
