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
