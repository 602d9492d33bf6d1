"""`archer env`'s GPU-stack check: archer's `vllm` extra pins the stack verl 0.9.1 declares, and
an installed stack that differs is a warning naming each package, its version and the pin."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core import environment
from archer.core.environment import declared_pins, stack_warnings

runner = CliRunner()
VERL_STACK = {"vllm": "0.24.0", "torch": "2.11.0", "transformers": "5.9.0"}


def test_the_vllm_extra_pins_verls_own_vllm_stack():
    assert declared_pins("vllm") == VERL_STACK


def test_the_pins_are_those_of_the_installed_verls_vllm_extra():
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        lines = requires("verl") or []
    except PackageNotFoundError:
        pytest.skip("the verl extra is not installed: pip install -e '.[verl]'")
    verl = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and req.marker.evaluate({"extra": "vllm"}) and req.name in VERL_STACK:
            verl[req.name] = next(s.version for s in req.specifier if s.operator == "==")
    assert verl == declared_pins("vllm")


def test_a_different_stack_is_a_warning_naming_each_package():
    (w,) = stack_warnings({"vllm": "0.31.0", "torch": "2.13.0", "transformers": "5.10.4"})
    for part in (
        "vllm 0.31.0 (pinned 0.24.0)",
        "torch 2.13.0 (pinned 2.11.0)",
        "transformers 5.10.4 (pinned 5.9.0)",
    ):
        assert part in w
    assert stack_warnings({"vllm": "0.24.0", "torch": "2.11.0+cu130", "transformers": "5.9.0"}) == []
    assert stack_warnings({"vllm": None, "torch": "2.13.0", "transformers": "5.10.4"}) == []  # no vLLM: CPU


@pytest.mark.parametrize("as_json", [True, False])
def test_archer_env_warns_on_a_mismatched_gpu_stack(monkeypatch, as_json):
    fake = {"vllm": "0.31.0", "torch": "2.13.0", "transformers": "5.9.0", "verl": None}
    real = environment.installed_version
    monkeypatch.setattr(environment, "installed_version", lambda d: fake[d] if d in fake else real(d))
    r = runner.invoke(app, ["env", *(["--json"] if as_json else [])])
    assert r.exit_code == 0, r.output
    if as_json:
        (w,) = json.loads(r.stdout)["warnings"]
    else:
        w = " ".join(r.stdout.split())
    assert "torch 2.13.0 (pinned 2.11.0)" in w and "vllm 0.31.0 (pinned 0.24.0)" in w
    assert "transformers 5.9.0 (pinned" not in w  # the one that matches is not named


def noisy_status():
    """A stand-in for the plugin probe that is as noisy as importing verl is."""
    import logging
    import sys
    import warnings

    warnings.warn("torchtitan engine is not available", UserWarning, stacklevel=1)
    logging.getLogger("verl.platform").warning("No supported accelerator detected")
    print("a print at import time")
    sys.stderr.write("a write to stderr\n")
    return {
        "entry_point": True,
        "env_var": False,
        "registered": True,
        "error": None,
        "policy_losses": ["archer"],
        "estimators": [],
        "trainer": True,
    }


@pytest.fixture()
def noisy_plugin(monkeypatch):
    from archer.core.engines.verl import plugin

    monkeypatch.setattr(plugin, "status", noisy_status)
    real = environment.installed_version
    monkeypatch.setattr(environment, "installed_version", lambda d: "0.9.1" if d == "verl" else real(d))


def test_verl_import_noise_is_kept_out_of_the_terminal(noisy_plugin):
    r = runner.invoke(app, ["env"])
    assert r.exit_code == 0, r.output
    for text in ("torchtitan", "No supported accelerator", "a print at import time", "a write to stderr"):
        assert text not in r.output, text
    assert "verl plugin: registered" in r.stdout
    assert "4 import warnings from verl hidden (--verbose shows them)" in r.stdout
    v = runner.invoke(app, ["env", "--verbose"])
    assert v.exit_code == 0, v.output
    for text in ("torchtitan", "No supported accelerator", "a print at import time", "a write to stderr"):
        assert text in v.stdout, text


def test_quiet_restores_logging_and_warnings():
    import logging
    import warnings

    root = logging.getLogger()
    before = root.handlers[:]
    messages: list[str] = []
    with environment.quiet(messages):
        warnings.warn("inside", UserWarning, stacklevel=1)
        logging.getLogger("x").error("logged inside")
    assert root.handlers == before
    assert messages == ["error: logged inside", "UserWarning: inside"]
    with pytest.warns(UserWarning, match="outside"):
        warnings.warn("outside", UserWarning, stacklevel=1)


def test_quick_skips_the_plugin_probe(noisy_plugin, monkeypatch):
    monkeypatch.setattr(environment, "probe_verl_plugin", lambda: pytest.fail("probed with --quick"))
    r = runner.invoke(app, ["env", "--quick"])
    assert r.exit_code == 0, r.output
    assert "verl plugin: not checked (--quick)" in r.stdout


def test_env_reports_the_optional_extras(monkeypatch):
    real = environment.installed_version
    monkeypatch.setattr(environment, "installed_version", lambda d: None if d == "wandb" else real(d))
    info = json.loads(runner.invoke(app, ["env", "--json", "--quick"]).stdout)
    assert info["extras"]["wandb"] == {
        "installed": False,
        "missing": ["wandb"],
        "enables": "trainer.logging.wandb=true",
    }
    assert set(info["extras"]) == {"tensorboard", "wandb", "plot"}
    text = " ".join(runner.invoke(app, ["env", "--quick"]).stdout.split())
    assert "wandb (missing wandb)" in text and "pip install -e '.[wandb]'" in text
    # the extras named here exist in pyproject.toml
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert set(info["extras"]) <= set(project["project"]["optional-dependencies"])
