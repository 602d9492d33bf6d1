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

    def boom():
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

    def gaps():
        info = real()
        info["missing"]["verl"] = ["vllm"]
        return info

    monkeypatch.setattr(env_cmd, "collect", gaps)
    r = runner.invoke(app, ["env"])
    assert r.exit_code == 0, r.output
    text = r.stdout.replace("\n", "")
    assert "pip install -e '.[verl]'" in text and "'.[verl,vllm]'" in text
