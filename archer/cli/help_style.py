"""Help text that reads like the field's CLIs (click, git, torchtune): `--out PATH`, `--n INTEGER`,
`--engine [local|vllm]`, flags with no placeholder, positional `KEY=VALUE...` and `PATHS...`.

Typer 0.29 shows Python types instead (`<bool>`, `<list[str]>`, `[[KEY=VALUE]...]...`). Rather than
a metavar on every option, `conventional(group)` re-classes the parameters of the built click tree
(`ArcherGroup.main` calls it before parsing) so that they render by these conventions; a metavar
given in the code still wins.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

# the type of a value -> its placeholder (click's names)
TYPE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "Path": "PATH", "bool": "BOOLEAN"}


def _placeholder(param: Any, ctx: Any) -> str:
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return "PATH"
    raw = param.display_type(ctx).strip("<>")  # e.g. int, list[str], list[Path]
    if raw.startswith("list[") and raw.endswith("]"):
        raw = raw[5:-1]
    return TYPE_NAMES.get(raw, raw.upper())


class ConventionalOption(TyperOption):
    """`--name PLACEHOLDER`; a flag shows none."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return None
        return _placeholder(self, ctx)


class ConventionalArgument(TyperArgument):
    """`NAME` or `NAME...` in upper case (its metavar, set by `conventional`), `[NAME]` in the
    usage line when optional; no type column."""

    def _rich_display_name(self) -> str:
        return self.display_name_raw

    def _usage_display_name(self) -> str:
        return self.display_name_raw if self.required else f"[{self.display_name_raw}]"

    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the name says what goes there; the help text the rest


def _argument_metavar(param: Any) -> str:
    name = param.metavar or (param.name or "").upper()
    for junk in ("[", "]", "..."):  # a metavar written as "[KEY=VALUE]..."
        name = name.replace(junk, "")
    return name + ("..." if param.nargs != 1 else "")


HELP_NAMES = ["-h", "--help"]  # archer's context_settings, inherited by every command


def conventional(command: Any) -> None:
    """Re-class every Typer parameter under `command`, the help option included (idempotent)."""
    params = list(getattr(command, "params", []))
    if getattr(command, "add_help_option", False) and hasattr(command, "get_help_option"):
        # built and cached here, as click would on first use (the names only are read from ctx)
        from types import SimpleNamespace

        params.append(command.get_help_option(SimpleNamespace(help_option_names=HELP_NAMES)))
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = ConventionalOption
        elif type(param) is TyperArgument:
            param.metavar = _argument_metavar(param)
            param.__class__ = ConventionalArgument
    for sub in getattr(command, "commands", {}).values():
        conventional(sub)
