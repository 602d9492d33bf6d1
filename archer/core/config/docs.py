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
    return "\n".join(lines).rstrip() + "\n"
