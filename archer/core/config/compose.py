"""Compose a config: preset chain + `key=value` overrides onto the typed schema, then validate.

Grammar of overrides (OmegaConf/Hydra style, what verl users already paste):
  key=value      set a schema key; value is parsed as YAML (numbers, bools, null, [lists])
  +key=value     the same; accepted for Hydra habit (only free-form sections take new keys)
  ~key           delete: drop the preset's value so the schema default applies
                 (inside a free-form section such as `verl`, the key is removed)

Every failure is a `ConfigError` (exit 2) that names the key, the source (preset file or
override) and, for unknown keys, the nearest valid keys. A preset's metadata (`extends`,
`source`) is read by `presets.py` and never merged into the config.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from archer.core.config.presets import load_preset_chain, preset_source, resolve_preset
from archer.core.config.schema import ArcherConfig
from archer.errors import ConfigError


# --------------------------------------------------------------------------- schema introspection
@dataclass(frozen=True)
class KeyInfo:
    key: str
    type: Any
    field: dataclasses.Field
    is_section: bool
    is_free_dict: bool

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def choices(self) -> tuple | None:
        return self.field.metadata.get("choices")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    # Optional[X] (typing.Union) and X | None (types.UnionType) are the same key type.
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


@cache
def schema_keys(cls: type = ArcherConfig) -> dict[str, KeyInfo]:
    """Every dotted key of the schema -> its type and field metadata."""
    out: dict[str, KeyInfo] = {}

    def walk(c: type, prefix: str) -> None:
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            tp, _ = _strip_optional(hints[f.name])
            key = prefix + f.name
            is_section = dataclasses.is_dataclass(tp)
            is_free = typing.get_origin(tp) is dict or tp is dict
            out[key] = KeyInfo(key, hints[f.name], f, is_section, is_free)
            if is_section:
                walk(tp, key + ".")

    walk(cls, "")
    return out


def type_name(tp: Any) -> str:
    base, optional = _strip_optional(tp)
    origin = typing.get_origin(base)
    if origin is list:
        (arg,) = typing.get_args(base) or (Any,)
        name = f"list of {type_name(arg)}"
    elif origin is dict:
        name = "mapping"
    elif dataclasses.is_dataclass(base):
        name = "section"
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name} or null" if optional else name


def suggest_keys(key: str, n: int = 3, keys: list[str] | None = None) -> list[str]:
    """The nearest valid keys: the same name in another section, close names in the same
    section, close full keys anywhere; failing all, the nearest names in the same section.
    `keys` defaults to archer's leaf keys (the verl engine passes verl's)."""
    if keys is None:
        keys = [k for k, info in schema_keys().items() if not info.is_section]
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    picks: list[str] = [k for k in keys if k.rpartition(".")[2] == leaf and k != key]
    for name in difflib.get_close_matches(leaf, list(siblings), n=n, cutoff=0.6):
        picks.append(siblings[name])
    for k in difflib.get_close_matches(key, keys, n=n, cutoff=0.75):
        picks.append(k)
    if not picks:  # nothing close: the nearest names anyway, so the user sees what exists
        picks = [siblings[x] for x in difflib.get_close_matches(leaf, list(siblings), n=n, cutoff=0.0)]
    seen: list[str] = []
    for k in picks:
        if k not in seen:
            seen.append(k)
    return seen[:n]


def _unknown_key_error(key: str, source: str) -> ConfigError:
    picks = suggest_keys(key)
    parent = key.rpartition(".")[0]
    msg = f"unknown config key '{key}' ({source})"
    if picks:
        msg += ". Did you mean " + ", ".join(f"'{p}'" for p in picks) + "?"
    hint = "run 'archer presets show quickstart --explain' to list the keys" + (
        f" under '{parent}'" if parent else ""
    )
    return ConfigError(msg, hint=hint)


def _check_keys(raw: dict[str, Any], prefix: str, source: str) -> None:
    keys = schema_keys()
    for k, v in raw.items():
        key = prefix + str(k)
        info = keys.get(key)
        if info is None:
            raise _unknown_key_error(key, source)
        if info.is_free_dict:
            continue
        if info.is_section:
            if isinstance(v, dict):
                _check_keys(v, key + ".", source)
            elif v is not None:
                raise ConfigError(
                    f"'{key}' is a section and needs a mapping of keys, got {v!r} ({source})",
                    hint=f"set its keys instead, e.g. {key}.<name>=<value>",
                )


# --------------------------------------------------------------------------- merging
def _merge(cfg: Any, raw: dict[str, Any], source: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException, ValidationError

    _check_keys(raw, "", source)
    raw = _coerce_lists(raw, "")
    missing = _missing_markers(raw, "")
    try:
        merged = OmegaConf.merge(cfg, raw)
        _open_free_sections(merged)
        for key in missing:  # merge() skips '???' values; a preset's ??? must still mean "required"
            OmegaConf.update(merged, key, "???", merge=False)
        return merged
    except ValidationError as e:
        raise _type_error(e, source) from e
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        if key and key not in schema_keys():
            raise _unknown_key_error(key, source) from e
        raise ConfigError(f"{_first_line(e)} ({source})") from e


def _open_free_sections(cfg: Any) -> None:
    """Free-form sections (e.g. `verl`) accept any key; the rest of the tree stays in struct mode."""
    from omegaconf import OmegaConf

    for key, info in schema_keys().items():
        if info.is_free_dict:
            node = OmegaConf.select(cfg, key)
            if node is not None:
                OmegaConf.set_struct(node, False)


def _missing_markers(raw: dict[str, Any], prefix: str) -> list[str]:
    out = []
    for k, v in raw.items():
        if isinstance(v, dict):
            out += _missing_markers(v, f"{prefix}{k}.")
        elif v == "???":
            out.append(f"{prefix}{k}")
    return out


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _type_error(e: Exception, source: str) -> ConfigError:
    key = getattr(e, "full_key", "") or "?"
    info = schema_keys().get(key)
    value = getattr(e, "value", None)
    if value is None:
        # OmegaConf puts the offending value in the message: "Value 'abc' of type 'str' could not ..."
        text = str(e)
        shown = text.split("'")[1] if text.count("'") >= 2 else text
    else:
        shown = value
    expected = type_name(info.type) if info else "a different type"
    return ConfigError(
        f"'{key}' expects {expected}, got {shown!r} ({source})",
        hint=f"{key}: {info.help}" if info and info.help else None,
    )


def _coerce_lists(raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A scalar given for a list key becomes a one-element list (data.train_files=x.parquet)."""
    keys = schema_keys()
    out = {}
    for k, v in raw.items():
        key = prefix + str(k)
        info = keys.get(key)
        if info is not None and info.is_section and isinstance(v, dict):
            out[k] = _coerce_lists(v, key + ".")
            continue
        if info is not None and not info.is_section:
            base, _ = _strip_optional(info.type)
            is_list = typing.get_origin(base) is list
            if is_list and v is not None and v != "???" and not isinstance(v, list):
                v = [v]
        out[k] = v
    return out


def parse_override(text: str) -> tuple[str, str, Any]:
    """'a.b=1' -> ('set', 'a.b', 1); '~a.b' -> ('del', 'a.b', None)."""
    from omegaconf import OmegaConf

    s = text.strip()
    if s.startswith("--"):
        raise ConfigError(
            f"'{text}' is not an override",
            hint=(
                "overrides are key=value (e.g. trainer.total_steps=10); options such as --out go before them"
            ),
        )
    if s.startswith("~"):
        key, eq, _ = s[1:].partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"bad override '{text}': nothing after '~'")
        if eq:
            raise ConfigError(
                f"bad override '{text}': ~key drops a value and takes none",
                hint=f"~{key} to drop the preset's value, or {key}=VALUE to set it",
            )
        return "del", key, None
    if s.startswith("+"):
        s = s.lstrip("+")
    if "=" not in s:
        raise ConfigError(
            f"bad override '{text}': expected key=value",
            hint="for example: trainer.total_steps=10  (or ~key to drop a preset's value)",
        )
    key, _, value = s.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"bad override '{text}': empty key")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
    except Exception as e:  # OmegaConf's own errors, and YAML's (an unbalanced bracket or quote)
        problem = getattr(e, "problem", None)  # a YAML error: "expected ',' or ']', but got ..."
        why = f"{e.context}: {problem}" if problem and getattr(e, "context", None) else problem
        raise ConfigError(
            f"cannot parse the value of override '{text}': {why or _first_line(e)}",
            hint="values are YAML: lists are [a,b], and a value holding brackets, commas or "
            "quotes needs quoting, e.g. 'key=\"[x\"'",
        ) from e
    return "set", key, parsed


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _delete(raw: dict[str, Any], key: str) -> None:
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.get(p)
        if not isinstance(node, dict):
            return
    node.pop(parts[-1], None)


def _free_dict_prefix(key: str) -> str | None:
    keys = schema_keys()
    parts = key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        info = keys.get(prefix)
        if info is not None and info.is_free_dict:
            return prefix
    return None


# --------------------------------------------------------------------------- validation
def validate(cfg: Any) -> None:
    """Check choices and numeric bounds of every key, then cross-key rules."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for key, info in schema_keys().items():
        if info.is_section or info.is_free_dict:
            continue
        value = _get(container, key)
        if value is None or value == "???":
            continue
        meta = info.field.metadata
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"'{key}' must be one of {', '.join(map(str, choices))}; got {value!r}",
                hint=info.help or None,
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for op, bound, ok in (
                ("ge", meta.get("ge"), lambda v, b: v >= b),
                ("gt", meta.get("gt"), lambda v, b: v > b),
                ("le", meta.get("le"), lambda v, b: v <= b),
                ("lt", meta.get("lt"), lambda v, b: v < b),
            ):
                if bound is not None and not ok(value, bound):
                    sym = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op]
                    raise ConfigError(f"'{key}' must be {sym} {bound}; got {value!r}", hint=info.help or None)
    _cross_checks(container)


def _get(container: Any, key: str) -> Any:
    node = container
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _cross_checks(c: dict[str, Any]) -> None:
    actor, data, rollout = c["actor"], c["data"], c["rollout"]
    if data["train_batch_size"] % actor["ppo_mini_batch_size"] != 0:
        raise ConfigError(
            f"data.train_batch_size ({data['train_batch_size']}) must be a multiple of "
            f"actor.ppo_mini_batch_size ({actor['ppo_mini_batch_size']})",
            hint="mini-batches are counted in prompts, as in verl",
        )
    if c["algorithm"]["adv_estimator"] in ("grpo", "rloo") and rollout["n"] < 2:
        raise ConfigError(
            f"algorithm.adv_estimator={c['algorithm']['adv_estimator']} compares responses within a group: "
            f"rollout.n must be >= 2, got {rollout['n']}"
        )
    ob = c["algorithm"]["overlong_buffer"]
    if ob["enable"] and ob["len"] >= rollout["max_new_tokens"]:
        raise ConfigError(
            f"algorithm.overlong_buffer.len ({ob['len']}) must be smaller than rollout.max_new_tokens "
            f"({rollout['max_new_tokens']})"
        )
    from archer.core.rewards import REWARD_FUNCTIONS

    for pattern, name in (c["reward"].get("by_source") or {}).items():
        if name not in REWARD_FUNCTIONS:
            raise ConfigError(
                f"'reward.by_source.{pattern}' must be one of {', '.join(REWARD_FUNCTIONS)}; got {name!r}",
                hint="reward.by_source maps a data_source (or a glob pattern) to a reward function",
            )
    betas = c["actor"]["optim"]["betas"]
    if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
        raise ConfigError(
            f"'actor.optim.betas' must be two numbers in [0, 1); got {betas}",
            hint="AdamW's (beta1, beta2), for example actor.optim.betas=[0.9,0.999]",
        )
    tiny = c["model"]["tiny"]
    if c["model"]["path"] is None and tiny["hidden_size"] % tiny["num_heads"]:
        raise ConfigError(
            f"model.tiny.hidden_size ({tiny['hidden_size']}) must be divisible by model.tiny.num_heads "
            f"({tiny['num_heads']})"
        )
    if c["model"]["path"] is None and tiny["num_heads"] % tiny["num_kv_heads"]:
        raise ConfigError("model.tiny.num_heads must be a multiple of model.tiny.num_kv_heads")


# --------------------------------------------------------------------------- public API
@dataclass
class Composed:
    """A composed, validated config and where it came from."""

    cfg: Any  # omegaconf.DictConfig, struct mode, typed as ArcherConfig
    preset: str
    preset_path: Path | None
    chain: list[Path] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    # the preset's `source:` block (schema.PresetSource as a dict) and the file it is in: the
    # preset's own, or the nearest parent's when the preset has none
    source: dict[str, Any] | None = None
    source_path: Path | None = None

    def missing(self) -> list[str]:
        from omegaconf import OmegaConf

        return sorted(OmegaConf.missing_keys(self.cfg))

    def require_complete(self) -> None:
        """Fail if a required value (`???` in a preset) was never set."""
        missing = self.missing()
        if missing:
            first = missing[0]
            info = schema_keys().get(first)
            example = "/path/to/model" if first == "model.path" else "<value>"
            raise ConfigError(
                f"required setting{'s' if len(missing) > 1 else ''} not set: {', '.join(missing)}",
                hint=f"add {first}={example} to the command line"
                + (f" ({info.help})" if info and info.help else ""),
            )

    def to_yaml(self, resolve: bool = True) -> str:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(self.cfg, resolve=resolve)

    def to_dict(self, resolve: bool = True) -> dict[str, Any]:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(self.cfg, resolve=resolve, throw_on_missing=False)  # type: ignore[return-value]


def compose_dict(
    raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "config"
) -> Any:
    """Compose from an in-memory dict (tests, sweeps); returns the DictConfig."""
    return _compose(dict(raw), list(overrides), source)


def _compose(raw: dict[str, Any], overrides: list[str], source: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parsed = [(text, *parse_override(text)) for text in overrides]
    for text, op, key, _ in parsed:
        if op == "del":
            if key not in schema_keys() and _free_dict_prefix(key) is None:
                raise _unknown_key_error(key, f"override '{text}'")
            _delete(raw, key)

    cfg = OmegaConf.structured(ArcherConfig)
    OmegaConf.set_struct(cfg, True)
    _open_free_sections(cfg)
    cfg = _merge(cfg, raw, source)
    for text, op, key, value in parsed:
        if op != "set":
            continue
        cfg = _merge(cfg, _nest(key, value), f"override '{text}'")
    try:
        validate(cfg)
    except OmegaConfBaseException as e:  # e.g. a broken ${interpolation}
        raise ConfigError(f"cannot resolve the config: {_first_line(e)}") from e
    return cfg


def compose(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> Composed:
    """Resolve a preset name or path, merge its `extends` chain and the overrides, validate."""
    path = resolve_preset(preset)
    raw, chain = load_preset_chain(path)
    cfg = _compose(raw, list(overrides), f"preset {path}")
    source, source_path = preset_source(chain)
    return Composed(
        cfg=cfg,
        preset=path.stem,
        preset_path=path,
        chain=chain,
        overrides=list(overrides),
        source=source,
        source_path=source_path,
    )


def explain_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every leaf key: the source of docs/config.md."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.structured(ArcherConfig))
    rows = []
    for key, info in schema_keys().items():
        if info.is_section:
            continue
        default = _get(defaults, key)
        kind = type_name(info.type)
        if info.choices:
            kind = " | ".join(map(str, info.choices))
        rows.append((key, kind, "null" if default is None else str(default), info.help))
    return rows
