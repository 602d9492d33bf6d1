"""`archer env`: what is installed, which GPUs are visible, and what each engine still needs."""

from __future__ import annotations

import json

import typer

EPILOG = "Examples:  archer env  ·  archer env --json"


def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show versions of python, torch, transformers, verl, ray, vllm, the CUDA devices, and what is
    missing."""
    from archer.core.environment import PACKAGES, collect

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
    hints = info["hints"]
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
    for w in info["warnings"]:
        out().print(f"[yellow]warning[/yellow]: {escape(w)}")
