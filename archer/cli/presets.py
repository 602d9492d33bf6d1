"""`archer presets ls|show|cp|validate`: find, read, copy and check presets (torchtune's
ls/cp/cat/validate)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from archer.cli._console import out, print_yaml, warn

app = typer.Typer(
    help="List, show, copy and validate presets (YAML configs for archer train).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples:  archer presets ls  ·  archer presets show math --resolved  ·  "
    "archer presets cp quickstart ./my.yaml  ·  archer presets validate ./my.yaml",
)


def _summary(name: str, path: Path) -> dict:
    from archer.core.config import compose

    try:
        c = compose(str(path)).to_dict()
    except Exception as e:  # a broken user preset must not break the listing
        return {
            "name": name,
            "engine": "?",
            "model": "?",
            "algorithm": "?",
            "description": f"(invalid: {e})",
            "path": str(path),
        }
    model = c["model"]["path"]
    if model is None:
        t = c["model"]["tiny"]
        model = f"tiny Qwen2 h{t['hidden_size']}/L{t['num_layers']} (in code)"
    elif model == "???":
        model = "(set model.path)"
    algo = f"{c['algorithm']['adv_estimator']} / {c['actor']['policy_loss']}"
    return {
        "name": name,
        "engine": c["engine"],
        "model": model,
        "algorithm": algo,
        "description": c["description"],
        "path": str(path),
    }


@app.command("ls", epilog="Example:  archer presets ls --json")
def ls(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the presets: name, engine, model, algorithm and a one-line description."""
    from archer.core.config.presets import list_presets

    rows = [_summary(n, p) for n, p in list_presets().items()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="archer presets", title_justify="left")
    for col in ("name", "engine", "model", "algorithm", "description"):
        table.add_column(col, overflow="fold", style="bold cyan" if col == "name" else None)
    for r in rows:
        table.add_row(r["name"], r["engine"], r["model"], r["algorithm"], r["description"])
    out().print(table)
    out().print(
        "[dim]Show one: archer presets show NAME --resolved  ·  run one: archer train --preset NAME[/dim]"
    )


@app.command(
    "show",
    epilog="Examples:  archer presets show quickstart  ·  archer presets show math model.path=/m --resolved "
    " ·  archer presets show quickstart --explain",
)
def show(
    name: str = typer.Argument(..., help="Preset name or path to a YAML file."),
    overrides: list[str] | None = typer.Argument(None, metavar="[KEY=VALUE]...", help="Overrides to apply."),
    resolved: bool = typer.Option(
        False, "--resolved", help="Print the full config after extends, overrides and interpolation."
    ),
    explain: bool = typer.Option(
        False, "--explain", help="List every key with its type, value and doc line."
    ),
) -> None:
    """Print a preset: the file as written, or the fully resolved config."""
    from archer.core.config import compose
    from archer.core.config.presets import resolve_preset

    if explain:
        _explain(compose(name, overrides or []))
        return
    if not resolved and not overrides:
        print_yaml(resolve_preset(name).read_text())
        return
    c = compose(name, overrides or [])
    print_yaml(c.to_yaml(resolve=True))
    missing = c.missing()
    if missing:
        warn(f"not set yet (required before training): {', '.join(missing)}")


def _explain(c) -> None:
    from rich.markup import escape
    from rich.table import Table

    from archer.core.config.compose import _get, explain_rows

    values = c.to_dict()
    if not out().is_terminal:  # one greppable line per key when piped
        for key, kind, _default, doc in explain_rows():
            v = _get(values, key)
            typer.echo(f"{key} = {'null' if v is None else v}    # {kind}; {doc}")
        return
    table = Table(title=f"keys of preset '{c.preset}'", title_justify="left")
    for col in ("key", "type", "value", "doc"):
        table.add_column(col, overflow="fold")
    for key, kind, default, doc in explain_rows():
        v = _get(values, key)
        shown = "null" if v is None else str(v)
        style = "bold" if shown != default else ""
        table.add_row(
            escape(key), escape(kind), f"[{style}]{escape(shown)}[/]" if style else escape(shown), escape(doc)
        )
    out().print(table)


@app.command(
    "cp",
    epilog="Examples:  archer presets cp quickstart ./my.yaml  ·  archer presets cp math configs/ --force",
)
def cp(
    name: str = typer.Argument(..., help="Preset to copy."),
    dest: Path = typer.Argument(..., help="Destination file or directory."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing file."),
) -> None:
    """Copy a preset to a file you can edit (then run it with archer train --preset FILE)."""
    from archer.core.config.presets import resolve_preset
    from archer.errors import UsageError

    src = resolve_preset(name)
    target = dest / src.name if dest.is_dir() else dest
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="pass --force to overwrite it")
    if not target.parent.exists():
        raise UsageError(
            f"directory {target.parent} does not exist", hint=f"create it first: mkdir -p {target.parent}"
        )
    shutil.copyfile(src, target)
    out().print(f"Copied preset [bold]{src.stem}[/bold] to {target}")
    out().print(
        f"[dim]Edit it, then: archer presets validate {target}  ·  archer train --preset {target}[/dim]"
    )


@app.command("validate", epilog="Example:  archer presets validate ./my.yaml")
def validate(path: str = typer.Argument(..., help="Preset file (or name) to check.")) -> None:
    """Check that a preset is well-formed: known keys, right types, allowed values."""
    from archer.core.config import compose

    c = compose(path)
    out().print(f"[green]OK[/green]: {c.preset_path} is well-formed (engine {c.cfg.engine}).")
    missing = c.missing()
    if missing:
        warn(f"not set yet (required before training): {', '.join(missing)}")
