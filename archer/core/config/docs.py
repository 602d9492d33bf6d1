"""The text of docs/config.md, rendered from the schema, so the reference can never drift from the
code. Core returns the text; the entry point that writes it is archer/cli/config_docs.py:

    python -m archer.cli.config_docs > docs/config.md
"""

from __future__ import annotations

from archer.core.config.compose import explain_rows, schema_keys

HEADER = """# Configuration reference

Every key of archer's config, generated from `archer/core/config/schema.py`
(`python -m archer.cli.config_docs > docs/config.md`; a test fails when this file is stale).
Set keys in a preset YAML or on the command line as `key=value`; `~key` drops a preset's value.
`archer presets show NAME --explain` prints the same list with a preset's values.
"""


def render_markdown() -> str:
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    for key, kind, default, doc in explain_rows():
        top = key.split(".")[0] if "." in key else "(top level)"
        sections.setdefault(top, []).append((key, kind, default, doc))
    keys = schema_keys()
    lines = [HEADER]
    for top, rows in sections.items():
        info = keys.get(top)
        title = f"## `{top}`" if top != "(top level)" else "## Top level"
        lines.append(title)
        if info is not None and info.help:
            lines.append(f"\n{info.help[0].upper() + info.help[1:]}.\n")
        else:
            lines.append("")
        lines.append("| key | type / choices | default | meaning |")
        lines.append("| --- | --- | --- | --- |")
        for key, kind, default, doc in rows:
            esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            lines.append(f"| `{key}` | {esc(kind)} | `{esc(default)}` | {esc(doc)} |")
        lines.append("")
    lines += _metadata_section()
    return "\n".join(lines).rstrip() + "\n"


def _metadata_section() -> list[str]:
    """The two top-level keys of a preset file that are metadata, not config."""
    import dataclasses
    import typing

    from archer.core.config.compose import type_name
    from archer.core.config.schema import PresetSource, SourceDifference

    lines = [
        "## Preset metadata: `extends` and `source`",
        "",
        "Two top-level keys of a preset file are not config keys: they are read from the file and "
        "never merged into the config, overridden on the command line or saved with a run.",
        "",
        "- `extends: NAME` (or a path): the parent preset; this file's keys are merged onto it.",
        "- `source:` the public run the preset reproduces, shown by `archer presets ls` and "
        "`archer presets show NAME` (a preset without one shows its nearest parent's, marked as "
        "such); docs/recipes.md lists every preset's.",
        "",
    ]
    for cls, title in ((PresetSource, "source"), (SourceDifference, "source.differences[]")):
        lines += [f"`{title}`:", "", "| field | type | required | meaning |", "| --- | --- | --- | --- |"]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            kind = type_name(hints[f.name]).replace("list of section", "list of mappings").replace("|", "\\|")
            lines.append(
                f"| `{f.name}` | {kind} | {'yes' if required else 'no'} | {f.metadata.get('help', '')} |"
            )
        lines.append("")
    return lines
