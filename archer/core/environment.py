"""The environment probe behind `archer env`: installed versions, visible GPUs, what each engine
still lacks, and how the installed GPU stack compares with the one verl 0.9.1 was released with.

Pins are read from archer's own package metadata (pyproject.toml's extras), never restated here.
Returns data only; `archer.cli.env` renders it.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, requires, version
from typing import Any

# (distribution name, import name, needed by)
PACKAGES = [
    ("archer", "archer", "all"),
    ("torch", "torch", "local, verl"),
    ("transformers", "transformers", "local, verl"),
    ("tokenizers", "tokenizers", "local, verl"),
    ("pyarrow", "pyarrow", "all"),
    ("omegaconf", "omegaconf", "all"),
    ("math-verify", "math_verify", "math rewards"),
    ("textual", "textual", "archer view"),
    ("verl", "verl", "verl"),
    ("ray", "ray", "verl"),
    ("fastapi", "fastapi", "verl"),
    ("uvicorn", "uvicorn", "verl"),
    ("vllm", "vllm", "verl (GPU rollouts)"),
    ("flash-attn", "flash_attn", "verl (flash_attention_2)"),
    ("tensorboard", "tensorboard", "logging (optional)"),
    ("wandb", "wandb", "logging (optional)"),
    ("matplotlib", "matplotlib", "collect --plot (optional)"),
    ("plotext", "plotext", "collect --plot-terminal (optional)"),
    ("trl", "trl", "bench"),
]

REQUIREMENTS = {
    "local": ["torch", "transformers", "tokenizers", "pyarrow", "omegaconf"],
    "verl": ["torch", "transformers", "verl", "ray", "fastapi", "uvicorn"],
    "view": ["textual", "pyarrow"],
}
INSTALL_HINTS = {
    "local": "pip install torch==2.13.0 && pip install -e .",
    "verl": "pip install -e '.[verl]' (CPU or GPU); '.[verl,vllm]' for vLLM rollouts on a GPU node "
    "(docs/install.md)",
    "view": "pip install -e .",
}


def installed_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _requirements() -> list[str]:
    """archer's requirements: from the checkout's pyproject.toml when archer runs from one (an
    editable install's metadata keeps the extras of the day it was installed), else from the
    installed distribution's metadata."""
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if sys.version_info >= (3, 11) and pyproject.is_file():
        import tomllib

        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == "archer":
            lines = list(project.get("dependencies", []))
            for extra, reqs in project.get("optional-dependencies", {}).items():
                lines += [f'{r}; extra == "{extra}"' for r in reqs]
            return lines
    return list(requires("archer") or [])


def declared_pins(extra: str) -> dict[str, str]:
    """`name -> version` for the `==` requirements archer declares under an extra (pyproject)."""
    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    for line in _requirements():
        req = Requirement(line)
        if req.marker is None or not req.marker.evaluate({"extra": extra}):
            continue
        for spec in req.specifier:
            if spec.operator == "==":
                pins[req.name.lower()] = spec.version
    return pins


def _base(v: str | None) -> str | None:
    """A version without its local build tag (2.11.0+cu130 -> 2.11.0)."""
    return None if v is None else v.split("+", 1)[0]


def stack_warnings(versions: dict[str, str | None]) -> list[str]:
    """Where the installed vLLM stack differs from the one archer pins for verl 0.9.1 (its `vllm`
    extra: the versions verl 0.9.1 itself declares). Only checked where vLLM is installed."""
    if not versions.get("vllm"):
        return []
    pins = declared_pins("vllm")
    off = [
        f"{name} {versions.get(name) or 'missing'} (pinned {pin})"
        for name, pin in sorted(pins.items())
        if _base(versions.get(name)) != pin
    ]
    if not off:
        return []
    stack = ", ".join(f"{n} {v}" for n, v in sorted(pins.items()))
    return [
        f"the GPU stack differs from the one verl 0.9.1 was released with ({stack}): {'; '.join(off)}; "
        "pip install -e '.[verl,vllm]' installs the pinned set"
    ]


# archer's optional extras (pyproject.toml): packages, and what they enable
EXTRAS = {
    "tensorboard": (["tensorboard"], "trainer.logging.tensorboard=true"),
    "wandb": (["wandb"], "trainer.logging.wandb=true"),
    "plot": (["matplotlib", "plotext"], "archer collect --plot / --plot-terminal"),
}


def extras(versions: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """Each optional extra: installed or not (and which of its packages are missing), what it enables."""
    return {
        name: {
            "installed": all(versions.get(d) for d in dists),
            "missing": [d for d in dists if not versions.get(d)],
            "enables": enables,
        }
        for name, (dists, enables) in EXTRAS.items()
    }


@contextmanager
def quiet(messages: list[str]) -> Iterator[None]:
    """Run a probe that imports third-party code without letting it write to the terminal: its
    Python warnings, log records (verl warns about every optional engine it cannot import) and
    prints are collected in `messages` instead."""
    import io
    import logging
    import warnings
    from contextlib import redirect_stderr, redirect_stdout

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(f"{record.levelname.lower()}: {record.getMessage()}")

    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    root.handlers[:] = [Collect()]
    buffer = io.StringIO()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught, redirect_stdout(buffer), redirect_stderr(buffer):
            warnings.simplefilter("always")
            yield
    finally:
        root.handlers[:] = saved_handlers
        messages.extend(f"{w.category.__name__}: {w.message}" for w in caught)
        messages.extend(line for line in buffer.getvalue().splitlines() if line.strip())


def collect(*, probe_plugin: bool = True) -> dict[str, Any]:
    """Everything `archer env` shows, as plain data (JSON-ready). `probe_plugin` imports verl
    (seconds; its import-time noise is kept in `probe_messages`, not printed)."""
    versions = {dist: installed_version(dist) for dist, _, _ in PACKAGES}
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": versions,
        "cuda": {"available": False, "devices": []},
    }
    if versions.get("torch"):
        import torch

        info["torch_build"] = torch.__version__
        info["cuda"]["version"] = torch.version.cuda
        if torch.cuda.is_available():
            info["cuda"]["available"] = True
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                info["cuda"]["devices"].append(
                    {"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)}
                )
    pins = declared_pins("verl")
    missing: dict[str, list[str]] = {}
    for engine, needs in REQUIREMENTS.items():
        gaps = []
        for dist in needs:
            v = versions.get(dist)
            if v is None:
                gaps.append(dist)
            elif dist in pins and _base(v) != pins[dist]:
                gaps.append(f"{dist}=={pins[dist]} (found {v})")
        missing[engine] = gaps
    info["missing"] = missing
    info["hints"] = INSTALL_HINTS
    info["warnings"] = stack_warnings(versions)
    info["extras"] = extras(versions)
    if probe_plugin and versions.get("verl"):
        info["verl_plugin"], info["probe_messages"] = probe_verl_plugin()
    return info


def probe_verl_plugin() -> tuple[dict[str, Any], list[str]]:
    """Whether archer's verl plugin registers here (imports verl: seconds; a plugin is known to
    load only once it did), and the warnings verl's import raised, kept out of the terminal."""
    messages: list[str] = []
    with quiet(messages):
        from archer.core.engines.verl.plugin import status

        result = status()
    return result, messages
