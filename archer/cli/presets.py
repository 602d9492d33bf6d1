"""`archer presets ls|show|cp|validate`: find, read, copy and check presets (torchtune's
ls/cp/cat/validate)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from archer.cli._console import out, print_yaml, warn
from archer.cli.completion import complete_override, complete_preset

app = typer.Typer(
    help="List, show, copy and validate presets (YAML configs for archer train).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples:  archer presets ls  ·  archer presets show math --resolved  ·  "
    "archer presets cp quickstart ./my.yaml  ·  archer presets validate ./my.yaml",
)


def _source_label(c) -> str:
    """'NAME · owner/repo@commit', marked when the block is a parent preset's."""
    src = c.source
    if not src:
        return ""
    label = f"{src['name']} · {src['repository']}@{src['commit']}"
    if c.source_path is not None and c.preset_path is not None and c.source_path != c.preset_path:
        label += f" (via {c.source_path.stem})"
    return label


def _summary(name: str, path: Path) -> dict:
    from archer.core.config import compose

    try:
        composed = compose(str(path))
        c = composed.to_dict()
    except Exception as e:  # a broken user preset must not break the listing
        return {
            "name": name,
            "engine": "?",
            "model": "?",
            "algorithm": "?",
            "description": f"(invalid: {e})",
            "source": None,
            "path": str(path),
        }
    model = c["model"]["path"]
    if model is None:
        t = c["model"]["tiny"]
        model = f"tiny Qwen2 h{t['hidden_size']}/L{t['num_layers']} (in code)"
    elif model == "???":
        model = "(set model.path)"
    algo = f"{c['algorithm']['adv_estimator']} / {c['actor']['policy_loss']}"
    source = None
    if composed.source:
        source = {
            "name": composed.source["name"],
            "repository": composed.source["repository"],
            "commit": composed.source["commit"],
            "from_preset": composed.source_path.stem if composed.source_path else None,
            "label": _source_label(composed),
        }
    return {
        "name": name,
        "engine": c["engine"],
        "model": model,
        "algorithm": algo,
        "description": c["description"],
        "source": source,
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
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="archer presets", title_justify="left")
    for col in ("name", "engine", "algorithm", "reproduces", "description"):
        table.add_column(col, overflow="fold", style="bold cyan" if col == "name" else None)
    for r in rows:
        source = r["source"]["label"] if r["source"] else "[dim]archer's own[/dim]"
        table.add_row(
            r["name"],
            r["engine"],
            r["algorithm"],
            escape(source) if r["source"] else source,
            escape(r["description"]),
        )
    out().print(table)
    out().print(
        "[dim]Show one (with its source and the differences kept on purpose): archer presets show NAME"
        "  ·  run one: archer train --preset NAME  ·  docs/recipes.md[/dim]"
    )


@app.command(
    "show",
    epilog="Examples:  archer presets show math  ·  archer presets show math --source  ·  "
    "archer presets show math model.path=/m --resolved  ·  archer presets show quickstart --explain",
)
def show(
    name: str = typer.Argument(
        ..., autocompletion=complete_preset, help="Preset name or path to a YAML file."
    ),
    overrides: list[str] | None = typer.Argument(
        None, metavar="KEY=VALUE", autocompletion=complete_override, help="Overrides to apply."
    ),
    resolved: bool = typer.Option(
        False, "--resolved", help="Print the full config after extends, overrides and interpolation."
    ),
    explain: bool = typer.Option(
        False, "--explain", help="List every key with its type, value and doc line."
    ),
    source: bool = typer.Option(
        False,
        "--source",
        help="Print only the preset's source block: the run it reproduces and the differences kept "
        "on purpose, each with archer's value and how to switch it back.",
    ),
) -> None:
    """Print a preset: the file as written (with the source run it reproduces), or the fully
    resolved config."""
    from archer.core.config import compose

    if explain:
        _explain(compose(name, overrides or []))
        return
    c = compose(name, overrides or [])
    if source:
        _print_source(c, only=True)
        return
    raw = not resolved and not overrides
    print_yaml(c.preset_path.read_text() if raw else c.to_yaml(resolve=True))
    _print_source(c, only=False, file_printed=raw)
    missing = c.missing()
    if missing and (resolved or overrides):
        warn(f"not set yet (required before training): {', '.join(missing)}")


def _differences(c) -> list[dict]:
    """The source block's differences, each with archer's current value(s) of its keys."""
    from archer.core.config.compose import _get, schema_keys

    values = c.to_dict()
    rows = []
    for d in c.source.get("differences") or []:
        shown = []
        for key in (k.strip() for k in d["key"].split(",")):
            if key in schema_keys() or key.startswith("verl."):
                v = _get(values, key)
                shown.append(f"{key}={'null' if v is None else v}")
            else:
                shown.append(key)
        rows.append({**d, "archer": ", ".join(shown)})
    return rows


def _print_source(c, *, only: bool, file_printed: bool = False) -> None:
    """The source block: a table on a terminal; YAML when piped (as comments after a config, so
    `show --resolved > x.yaml` stays loadable; nothing when the printed file holds the block)."""
    import sys

    import yaml

    if not c.source:
        if only:
            out().print(f"preset '{c.preset}' has no source block: it is archer's own (docs/recipes.md)")
        return
    inherited = c.source_path is not None and c.source_path != c.preset_path
    src = dict(c.source)
    rows = _differences(c)
    if not sys.stdout.isatty():
        if only:
            block = {"source": {**src, "differences": rows}}
            if inherited:
                block["source"]["from_preset"] = c.source_path.stem
            typer.echo(yaml.safe_dump(block, sort_keys=False, allow_unicode=True, width=110), nl=False)
        elif inherited or not file_printed:
            text = yaml.safe_dump({"source": {**src, "differences": rows}}, sort_keys=False, width=106)
            origin = f"; from preset {c.source_path.stem}" if inherited else ""
            header = f"# the preset's source (metadata, not config{origin}):"
            typer.echo("\n".join([header, *("# " + line for line in text.splitlines())]))
        return
    from rich.markup import escape
    from rich.table import Table

    via = f" [dim](from preset {c.source_path.stem}, which {c.preset} extends)[/dim]" if inherited else ""
    out().print(f"\n[bold]Reproduces[/bold] {escape(src['name'])}{via}")
    where = f"{src['repository']} @ {src['commit']}: {', '.join(src['script'])}"
    out().print(f"  {escape(where)}")
    if src.get("paper"):
        out().print(f"  paper: {escape(src['paper'])}")
    for line in src.get("notes") or []:
        out().print(f"  [dim]{escape(line)}[/dim]")
    if not rows:
        out().print("  [green]no differences kept on purpose[/green]")
        return
    table = Table(title="differences kept on purpose", title_justify="left")
    for col in ("archer", "source", "why", "switch back"):
        table.add_column(col, overflow="fold")
    for d in rows:
        table.add_row(
            escape(d["archer"]),
            escape(d["source"]),
            escape(d["why"]),
            escape(" ".join(d.get("revert") or []) or "—"),
        )
    out().print(table)


def _explain(c) -> None:
    """Every key with its type, value and doc; keys the preset's engine does not read are marked
    (dim, with the reason); the `verl` section, a tree of verl's own keys, follows as YAML."""
    from rich.markup import escape
    from rich.table import Table

    from archer.core.config.compose import _get, explain_rows
    from archer.core.engines.ignored import ignored_reason

    values = c.to_dict()
    engine = c.cfg.engine
    rows = [r for r in explain_rows() if r[0] != "verl"]
    section = values.get("verl") or {}
    if not out().is_terminal:  # one greppable line per key when piped
        for key, kind, _default, doc in rows:
            v = _get(values, key)
            why = ignored_reason(c.cfg, key)
            mark = f"  [ignored on {engine}: {why}]" if why else ""
            typer.echo(f"{key} = {'null' if v is None else v}    # {kind}; {doc}{mark}")
    else:
        table = Table(title=f"keys of preset '{c.preset}' (engine {engine})", title_justify="left")
        for col in ("key", "type", "value", "doc"):
            table.add_column(col, overflow="fold")
        ignored = 0
        for key, kind, default, doc in rows:
            v = _get(values, key)
            shown = "null" if v is None else str(v)
            why = ignored_reason(c.cfg, key)
            if why:
                ignored += 1
                table.add_row(
                    f"[dim]{escape(key)}[/dim]",
                    f"[dim]{escape(kind)}[/dim]",
                    f"[dim]{escape(shown)}[/dim]",
                    f"[yellow]ignored on {engine}:[/yellow] [dim]{escape(why)}[/dim]",
                )
                continue
            style = "bold" if shown != default else ""
            table.add_row(
                escape(key),
                escape(kind),
                f"[{style}]{escape(shown)}[/]" if style else escape(shown),
                escape(doc),
            )
        out().print(table)
        if ignored:
            out().print(f"[dim]{ignored} keys (dimmed) are not read by the {engine} engine[/dim]")
    import yaml

    header = "verl section: verl's own keys, passed to verl as written"
    if engine == "local":
        header += " (ignored on local)"
    if section:
        typer.echo(f"# {header}")
        print_yaml(yaml.safe_dump({"verl": section}, sort_keys=False, width=100))
    else:
        typer.echo(f"# {header}: empty (set verl.KEY=VALUE; docs/verl.md)")


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
    if not target.parent.is_dir():
        raise UsageError(
            f"{target.parent} is not a directory", hint="choose a destination folder or file name"
        )
    try:
        shutil.copyfile(src, target)
    except OSError as e:
        raise UsageError(
            f"cannot write {target}: {e.strerror or e}", hint="choose a destination you can write to"
        ) from e
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
