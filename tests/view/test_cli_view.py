"""`archer view` on the command line: what it refuses before starting the app, and what it never imports."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from archer.cli.main import app

runner = CliRunner()


def test_view_on_a_missing_path_fails_with_one_line(tmp_path):
    r = runner.invoke(app, ["view", str(tmp_path / "nope")])
    assert r.exit_code == 1
    assert "no trace at" in r.output and "Traceback" not in r.output


def test_view_on_a_directory_without_a_trace_hints_at_import(tmp_path):
    r = runner.invoke(app, ["view", str(tmp_path)])
    assert r.exit_code == 1
    assert "holds no trace" in r.output and "import-npz" in r.output


def test_view_rejects_a_missing_tokenizer_and_a_non_terminal(run_dir, tmp_path):
    r = runner.invoke(app, ["view", str(run_dir), "--tokenizer", str(tmp_path / "tok")])
    assert r.exit_code == 2 and "tokenizer folder" in r.output
    r = runner.invoke(app, ["view", str(run_dir)])  # CliRunner is not a terminal
    assert r.exit_code == 2 and "needs an interactive terminal" in r.output


def test_view_help_has_examples():
    r = runner.invoke(app, ["view", "-h"])
    assert r.exit_code == 0 and "--tokenizer" in r.output and "Examples" in r.output


def test_help_imports_neither_textual_nor_pyarrow():
    code = (
        "import sys\n"
        "from archer.cli.main import app\n"
        "for args in (['--help'], ['trace', '--help'], ['view', '--help']):\n"
        "    try:\n        app(args, prog_name='archer')\n"
        "    except SystemExit as e:\n        assert e.code == 0\n"
        "heavy = ('textual', 'pyarrow', 'torch', 'transformers', 'numpy')\n"
        "print('HEAVY=' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("HEAVY=")
