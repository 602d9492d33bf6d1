"""Shell completion for what archer's commands take: preset names and config keys.

`archer --install-completion` (Typer's) installs the shell hook; these callbacks then complete
`--preset q<TAB>` to `quickstart` and `rollout.te<TAB>` to `rollout.temperature=` (also after `~`,
which drops a key). They run inside the shell's completion call, so they import only the config
schema (no torch).
"""

from __future__ import annotations


def complete_preset(incomplete: str) -> list[str]:
    from archer.core.config.presets import list_presets

    return [name for name in list_presets() if name.startswith(incomplete)]


def complete_override(incomplete: str) -> list[str]:
    """Config keys (leaf keys end with '='; `verl.` continues with verl's own keys, free-form)."""
    if "=" in incomplete:
        return []
    from archer.core.config.compose import schema_keys

    tilde = "~" if incomplete.startswith("~") else ""
    stem = incomplete[len(tilde) :]
    out = []
    for key, info in schema_keys().items():
        if key.startswith(stem) and not info.is_section:
            out.append(f"{tilde}{key}" + ("" if tilde else "="))
    return out
