"""Field helpers that attach a doc line, choices and bounds to config dataclass fields.

OmegaConf checks types; choices and numeric bounds are kept in the dataclass field metadata and
checked by `archer.core.config.validate`. The same metadata produces `docs/config.md` and the
`archer presets show --explain` listing, so every knob carries its own documentation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any


def opt(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with a doc line and optional choices/bounds."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if value is not None:
            meta[name] = value
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, help: str = "") -> Any:
    """A nested config section."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})
