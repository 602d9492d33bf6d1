"""Repository-level promises: the README's commands, CI's script, presets shipped in the wheel."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_setup_and_test_commands():
    blocks = readme_blocks()
    setup, tests = blocks[0].strip(), blocks[1].strip()
    assert "pip install torch==2.13.0" in setup and "archer train --preset quickstart" in setup
    assert setup.index("torch==2.13.0") < setup.index("pip install -e .")
    assert "-c constraints.txt" in setup and "-c constraints.txt" in tests
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in script and "torch==2.13.0" in script
    text = (ROOT / "README.md").read_text()
    marked = re.search(r"<!-- test-command -->\n```bash\n(.*?)```\n<!-- /test-command -->", text, flags=re.S)
    assert marked and marked.group(1).strip() == readme_blocks()[1].strip()
    command = marked.group(1).strip()
    assert f'TEST_CMD="{command}"' in script  # the script checks README against this line at run time
    # and runs those very steps (the -q on pip only quietens it), with ruff between them
    install = script.index("pip install -q -e '.[test,verl]' -c constraints.txt\n")
    lint = script.index("ruff check archer tests bench\nruff format --check archer tests bench\n")
    tests = script.index("python -m pytest -q -n 2\n")
    assert install < lint < tests


@pytest.mark.slow
def test_wheel_ships_the_presets(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0 and "hatchling" in (r.stderr + r.stdout):
        r = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("archer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("archer/presets/")}
    assert {p.name for p in (ROOT / "presets").glob("*.yaml")} <= shipped
    # a non-editable install finds its presets inside the package
    target = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    code = (
        "import archer.core.config.presets as p; print(p.builtin_preset_dir()); "
        "print(sorted(p.list_presets()))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert str(target) in r.stdout.splitlines()[0]
    assert "quickstart" in r.stdout and "math" in r.stdout
