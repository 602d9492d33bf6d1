"""`archer env`: what is installed, which GPUs are visible, and what each engine still needs."""

from __future__ import annotations

import json

import typer

EPILOG = (
    "Checking verl's plugin imports verl (seconds); --quick skips it. The warnings verl prints while it "
    "is imported (optional engines it cannot find) are kept out of the way; --verbose lists them.\n\n"
    "Examples:  archer env  ·  archer env --quick  ·  archer env --json"
)


def env(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    quick: bool = typer.Option(False, "--quick", help="Skip the verl plugin check (no verl import)."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also list the warnings verl raised while it was imported."
    ),
) -> None:
    """Show versions of python, torch, transformers, verl, ray, vllm, the CUDA devices, the optional
    extras, and what each engine is missing."""
    from archer.core.environment import PACKAGES, collect, probe_verl_plugin

    info = collect(probe_plugin=False)
    probe = not quick and bool(info["packages"].get("verl"))
    if as_json:
        if probe:
            info["verl_plugin"], info["probe_messages"] = probe_verl_plugin()
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

    bits, lacking = [], []
    for name, x in info["extras"].items():
        if x["installed"]:
            bits.append(f"[green]{name}[/green]")
        else:
            bits.append(f"[yellow]{name}[/yellow] [dim](missing {', '.join(x['missing'])})[/dim]")
            lacking.append(name)
    line = "extras: " + ", ".join(bits)
    if lacking:
        install = "pip install -e '.[" + ",".join(lacking) + "]'"
        line += f"  [dim]({escape(install)})[/dim]"
    out().print(line)
    plugin = messages = None
    if probe:  # the fast part is already on screen; this imports verl
        plugin, messages = probe_verl_plugin()
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
    if messages and verbose:
        out().print(f"[dim]while verl was imported ({len(messages)} messages):[/dim]")
        for m in messages:
            out().print(f"  [dim]{escape(m)}[/dim]", soft_wrap=True)
    elif messages:
        out().print(f"[dim]{len(messages)} import warnings from verl hidden (--verbose shows them)[/dim]")
    elif quick and info["packages"].get("verl"):
        out().print("[dim]verl plugin: not checked (--quick)[/dim]")
