"""`archer env`: what is installed, which GPUs are visible, and what each engine still needs."""

from __future__ import annotations

import json
import platform
import sys

import typer

EPILOG = "Examples:  archer env  ·  archer env --json"

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
    ("trl", "trl", "bench"),
]

REQUIREMENTS = {
    "local": ["torch", "transformers", "tokenizers", "pyarrow", "omegaconf"],
    "verl": ["torch", "transformers", "verl", "ray", "fastapi", "uvicorn", "vllm"],
    "view": ["textual", "pyarrow"],
}
PINS = {"verl": "0.9.1"}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def collect() -> dict:
    versions = {dist: _version(dist) for dist, _, _ in PACKAGES}
    info: dict = {
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
    missing: dict[str, list[str]] = {}
    for engine, needs in REQUIREMENTS.items():
        gaps = []
        for dist in needs:
            v = versions.get(dist)
            if v is None:
                gaps.append(dist)
            elif dist in PINS and v != PINS[dist]:
                gaps.append(f"{dist}=={PINS[dist]} (found {v})")
        if engine == "verl" and not info["cuda"]["available"]:
            gaps.append("a CUDA GPU")
        missing[engine] = gaps
    info["missing"] = missing
    if versions.get("verl"):  # imports verl (seconds): the plugin is only known to load once it did
        from archer.core.engines.verl.plugin import status

        info["verl_plugin"] = status()
    return info


def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show versions of python, torch, transformers, verl, ray, vllm, the CUDA devices, and what is
    missing."""
    info = collect()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    from archer.cli._console import out

    t = Table(title=f"archer environment · Python {info['python']}", title_justify="left")
    t.add_column("package")
    t.add_column("version")
    t.add_column("needed by")
    for dist, _, needed in PACKAGES:
        v = info["packages"][dist]
        if dist == "torch" and v:
            v = info.get("torch_build", v)
        t.add_row(dist, v or "[red]not installed[/red]", needed)
    out().print(t)
    cuda = info["cuda"]
    if cuda["available"]:
        for d in cuda["devices"]:
            out().print(f"GPU {d['index']}: {d['name']} ({d['memory_gib']} GiB), CUDA {cuda.get('version')}")
    else:
        out().print("GPUs: none visible (the local engine runs on the CPU)")
    hints = {
        "local": "pip install torch==2.13.0 && pip install -e .",
        "verl": "pip install -e '.[verl,vllm]' on a GPU node",
        "view": "pip install -e .",
    }
    from rich.markup import escape

    plugin = info.get("verl_plugin")
    if plugin is not None:
        routes = [
            r
            for r, ok in (
                ("entry point", plugin["entry_point"]),
                ("VERL_USE_EXTERNAL_MODULES", plugin["env_var"]),
            )
            if ok
        ]
        if plugin["registered"]:
            out().print(
                f"verl plugin: [green]registered[/green] ({', '.join(routes) or 'imported by archer'}): "
                f"losses {', '.join(plugin['policy_losses'])}, trainer archer_sync"
            )
        else:
            out().print(f"verl plugin: [red]not registered[/red]: {escape(str(plugin['error']))}")
    for engine, gaps in info["missing"].items():
        if gaps:
            out().print(
                f"[yellow]{engine}[/yellow]: missing {', '.join(gaps)}  [dim]({escape(hints[engine])})[/dim]"
            )
        else:
            out().print(f"[green]{engine}[/green]: ready")
