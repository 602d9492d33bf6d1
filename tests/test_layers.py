"""The layering rules of docs/architecture.md, checked on the imports parsed from the source.

Every `import` and `from ... import` statement counts, including those inside functions (archer
imports heavy modules lazily, and a lazy import across a layer is still a dependency). Nothing is
imported to check this, so the test is fast and needs no optional package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "archer"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def package_imports(subpackage: str) -> dict[str, set[str]]:
    root = PKG.joinpath(*subpackage.split(".")[1:])
    files = [root.with_suffix(".py")] if root.with_suffix(".py").exists() else sorted(root.rglob("*.py"))
    return {module_name(f): imports_of(f) for f in files}


def violations(subpackage: str, forbidden) -> list[str]:
    return sorted(
        f"{mod} imports {name}"
        for mod, names in package_imports(subpackage).items()
        for name in names
        if forbidden(name)
    )


def top(name: str) -> str:
    return name.split(".")[0]


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_parser_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "archer" / "x"
    pkg.mkdir(parents=True)
    f = pkg / "m.py"
    f.write_text("from .y import z\ndef f():\n    import torch\n    from archer.cli import main\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert {"archer.x.y", "archer.x.y.z", "torch", "archer.cli", "archer.cli.main"} <= imports_of(f)
    finally:
        ROOT = saved


def test_influence_imports_torch_and_itself_only():
    bad = violations(
        "archer.influence",
        lambda n: top(n) not in STDLIB and top(n) != "torch" and not under(n, "archer.influence"),
    )
    assert not bad, bad


def test_the_view_imports_neither_torch_nor_engines():
    bad = violations(
        "archer.view",
        lambda n: (
            top(n) == "torch"
            or under(n, "archer.core.engines", "archer.core.rollout", "archer.influence", "archer.cli")
        ),
    )
    assert not bad, bad


def test_core_never_imports_the_cli_or_the_view():
    bad = violations("archer.core", lambda n: under(n, "archer.cli", "archer.view"))
    assert not bad, bad


def test_core_never_prints():
    """Presentation (Rich, print to the terminal) lives in archer/cli; core returns data or calls a
    reporter. No module of core is exempt (the collect/ablate renderers and the config-docs entry
    point live in archer/cli)."""
    bad = []
    for path in sorted((PKG / "core").rglob("*.py")):
        mod = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                bad.append(f"{mod}:{node.lineno} calls print()")
        bad += [f"{mod} imports {n}" for n in imports_of(path) if top(n) == "rich"]
    assert not bad, bad


@pytest.mark.parametrize("layer", ["archer.core.agent", "archer.core.evaluation", "archer.core.rollout"])
def test_generation_and_its_users_import_no_engine(layer):
    bad = violations(layer, lambda n: under(n, "archer.core.engines"))
    assert not bad, bad


def test_engines_do_not_import_each_other():
    local = violations("archer.core.engines.local", lambda n: under(n, "archer.core.engines.verl"))
    verl = violations("archer.core.engines.verl", lambda n: under(n, "archer.core.engines.local"))
    assert not local and not verl, local + verl


def test_help_imports_no_torch():
    code = (
        "import sys\nfrom archer.cli.main import app\n"
        "try:\n    app(['--help'], prog_name='archer')\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'verl', 'ray', 'textual') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
