"""Grid files for `archer ablate`: expansion into cases, stable case ids.

A grid file is YAML. Every key is a config key (dotted, or nested as mappings); a list value is an
axis and the axes form a Cartesian product; a scalar is a setting shared by every case. The
top-level `_` is a list of mappings whose values are set together (axolotl's paired values): each
entry is combined with every point of the product. A baseline case (`influence.enable=false`, no
grid settings) is always added. Case order is the order of the file (no shuffling), so a sweep
runs the way it reads.

Ids come from the settings alone (a readable slug plus a short hash of the canonical settings), so
the same case gets the same id whatever the key order in the file and whichever other cases the
grid holds; `--resume` relies on that.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.errors import ConfigError

PAIRED_KEY = "_"
BASELINE_ID = "baseline"
BASELINE_SETTINGS: dict[str, Any] = {"influence.enable": False}
SLUG_MAX = 48


@dataclass
class Case:
    """One point of the grid: the settings it adds to the preset and its id."""

    settings: dict[str, Any]
    id: str = ""
    baseline: bool = False
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = BASELINE_ID if self.baseline else case_id(self.settings)
        if not self.overrides:
            self.overrides = settings_to_overrides(self.settings)

    def label(self) -> str:
        return settings_label(self.settings)


# --------------------------------------------------------------------------- values and ids
def format_value(value: Any) -> str:
    """A value as an override/YAML literal: JSON is valid YAML, so it parses back unchanged
    (strings with regex characters, lists, null, booleans)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if value != value else (".inf" if value > 0 else "-.inf")
    if (
        isinstance(value, str)
        and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-/]*", value)
        and value.lower()
        not in (
            "true",
            "false",
            "null",
            "yes",
            "no",
            "on",
            "off",
            "none",
            "~",
        )
    ):
        return value  # plain words stay readable: hessian_mode=inverse
    return json.dumps(value)


def settings_to_overrides(settings: Mapping[str, Any]) -> list[str]:
    return [f"{k}={format_value(v)}" for k, v in settings.items()]


def canonical(settings: Mapping[str, Any]) -> str:
    """The settings as canonical JSON (sorted keys): the input of the case hash."""
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), default=str)


def _slug_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+]+", "-", text).strip("-.")


def case_id(settings: Mapping[str, Any]) -> str:
    """`<slug>-<hash8>`. The slug lists the values in key order (`leaf-value` for numbers, booleans
    and null, whose bare value says little), cut at SLUG_MAX; the hash covers the canonical
    settings, so ids are unique and do not depend on the key order of the grid file."""
    digest = hashlib.sha1(canonical(settings).encode()).hexdigest()[:8]
    parts = []
    for key in sorted(settings):
        value = settings[key]
        if isinstance(value, str):
            parts.append(_slug_part(value))
        else:
            parts.append(_slug_part(f"{key.rsplit('.', 1)[-1]}-{json.dumps(value, default=str)}"))
    slug = ""
    for p in (p for p in parts if p):
        candidate = f"{slug}-{p}" if slug else p
        if len(candidate) > SLUG_MAX:
            slug = slug or p[:SLUG_MAX].rstrip("-.")
            break
        slug = candidate
    return f"{slug}-{digest}" if slug else digest


def settings_label(settings: Mapping[str, Any]) -> str:
    """`key=value, ...` with values written as on the command line."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in settings.items()) or "(preset as is)"


# --------------------------------------------------------------------------- loading
def load_grid(path: str | Path) -> dict[str, Any]:
    """Read a grid file; every problem is a ConfigError that names the file."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"grid file {p} does not exist", hint="pass a YAML file with --grid (see docs/ablate-collect.md)"
        )
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"grid file {p} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"grid file {p} must be a non-empty mapping of config keys to lists of values",
            hint="for example:  influence.hessian_mode: [inverse, identity]",
        )
    return raw


def _flatten(node: Mapping[Any, Any], prefix: str, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        if not isinstance(k, str) or not k.strip():
            raise ConfigError(f"grid {where}: key {k!r} is not a config key name")
        if k == PAIRED_KEY:
            raise ConfigError(
                f"grid {where}: '{PAIRED_KEY}' (paired values) is allowed only at the top level"
            )
        key = prefix + k
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + ".", where))
        else:
            if key in out:
                raise ConfigError(f"grid {where}: key '{key}' is given twice")
            out[key] = v
    return out


def expand_grid(grid: Mapping[str, Any], *, with_baseline: bool = True) -> list[Case]:
    """Cases of a grid: product of the list axes x each `_` entry, the baseline first.

    Raises ConfigError for an empty axis, a repeated value, a key that is both an axis and a
    paired value, a malformed `_`, or two cases with the same settings.
    """
    if not isinstance(grid, Mapping):
        raise ConfigError("a grid must be a mapping of config keys to lists of values")
    flat = _flatten({k: v for k, v in grid.items() if k != PAIRED_KEY}, "", "file")
    axes: dict[str, list[Any]] = {}
    for key, value in flat.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(
                f"grid axis '{key}' has an empty list", hint="give at least one value, or remove the key"
            )
        seen: list[str] = []
        for v in values:
            c = canonical({"v": v})
            if c in seen:
                raise ConfigError(f"grid axis '{key}' lists {format_value(v)} twice")
            seen.append(c)
        axes[key] = values

    paired_raw = grid.get(PAIRED_KEY, None)
    paired: list[dict[str, Any]] = []
    if paired_raw is not None:
        if not isinstance(paired_raw, list) or not paired_raw:
            raise ConfigError(
                f"grid '{PAIRED_KEY}' must be a non-empty list of mappings (values set together)",
                hint="for example:\n_:\n  - {influence.hessian_mode: inverse, influence.reg_lambda: 0.1}\n"
                "  - {influence.hessian_mode: identity}",
            )
        for i, entry in enumerate(paired_raw):
            if not isinstance(entry, dict) or not entry:
                raise ConfigError(
                    f"grid '{PAIRED_KEY}' entry {i + 1} must be a non-empty mapping, got {entry!r}"
                )
            flat_entry = _flatten(entry, "", f"'{PAIRED_KEY}' entry {i + 1}")
            clash = [k for k in flat_entry if k in axes]
            if clash:
                raise ConfigError(
                    f"grid key '{clash[0]}' is both an axis and in '{PAIRED_KEY}' entry {i + 1}",
                    hint="set a key either as a list (product) or inside the '_' entries (paired), not both",
                )
            paired.append(flat_entry)

    names = list(axes)
    cases: list[Case] = []
    for combo in itertools.product(*(axes[k] for k in names)):
        point = dict(zip(names, combo))
        for entry in paired or [{}]:
            cases.append(Case(settings={**point, **entry}))

    out: list[Case] = [Case(settings=dict(BASELINE_SETTINGS), baseline=True)] if with_baseline else []
    first: dict[str, int] = (
        {canonical(BASELINE_SETTINGS): 0} if with_baseline else {}
    )  # settings -> case number
    for n, c in enumerate(cases, start=1):
        key = canonical(c.settings)
        if key in first:
            if first[key] == 0:
                continue  # the grid spells out the baseline itself: run it once
            raise ConfigError(
                f"grid cases {first[key]} and {n} (in file order) have the same settings: {c.label()}",
                hint="a '_' entry repeats a point of the product, or a value is listed twice",
            )
        first[key] = n
        out.append(c)
    if len(out) == (1 if with_baseline else 0):
        raise ConfigError(
            "the grid has no cases besides the baseline",
            hint="add an axis, e.g. influence.hessian_mode: [inverse, identity]",
        )
    return out
