"""Where presets live and how a name becomes a YAML file.

Built-in presets ship inside the wheel as `archer/presets/*.yaml` (hatch force-includes the
repository's `presets/`); in a source checkout they are read from `<repo>/presets`. Extra
directories can be added with ARCHER_PRESET_PATH (os.pathsep-separated). A name resolves to the
first directory that has `<name>.yaml`; anything that looks like a path is used as a path.

Two top-level keys of a preset file are metadata, not config: `extends` (the parent preset) and
`source` (the public run the preset reproduces, `schema.PresetSource`). Both are taken out of the
file before its keys are merged, so neither is inherited, overridable or saved with a run.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from archer.errors import ConfigError, UsageError

PRESET_PATH_ENV = "ARCHER_PRESET_PATH"
EXTENDS_KEY = "extends"
SOURCE_KEY = "source"


def builtin_preset_dir() -> Path:
    """The directory of the presets that come with archer."""
    pkg = Path(__file__).resolve().parents[2]  # .../archer
    installed = pkg / "presets"
    if installed.is_dir():
        return installed
    return pkg.parent / "presets"  # source checkout / editable install


def preset_dirs() -> list[Path]:
    dirs = []
    for item in os.environ.get(PRESET_PATH_ENV, "").split(os.pathsep):
        if item.strip():
            dirs.append(Path(item).expanduser())
    dirs.append(builtin_preset_dir())
    return dirs


def list_presets() -> dict[str, Path]:
    """Preset name -> file, earlier directories shadowing later ones."""
    found: dict[str, Path] = {}
    for d in preset_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return dict(sorted(found.items()))


def _looks_like_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or os.sep in ref or ref.startswith(".")


def resolve_preset(ref: str, relative_to: Path | None = None) -> Path:
    """Turn a preset name or path into an existing file, or fail with a suggestion."""
    if _looks_like_path(ref):
        p = Path(ref).expanduser()
        if not p.is_absolute() and relative_to is not None:
            p = relative_to / p
        if p.is_file():
            return p
        raise UsageError(
            f"preset file not found: {p}", hint="run 'archer presets ls' for the built-in presets"
        )
    presets = list_presets()
    if ref in presets:
        return presets[ref]
    close = difflib.get_close_matches(ref, list(presets), n=3, cutoff=0.5)
    if close:
        suggestion = " or ".join(f"'{c}'" for c in close)
        raise UsageError(
            f"unknown preset '{ref}'. Did you mean {suggestion}?", hint="run 'archer presets ls'"
        )
    raise UsageError(f"unknown preset '{ref}'", hint="run 'archer presets ls' to see the presets")


def load_yaml_unique(text: str) -> Any:
    """`yaml.safe_load`, except that a key given twice in one mapping is an error (PyYAML keeps
    the last value silently, so a preset edited in two places would quietly lose one)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"key '{key}' is given twice (lines {seen[key]} and {line})",
                    hint="keep one of them: YAML would silently use the last",
                )
            seen[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML file into a plain dict (interpolations kept as strings)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read preset {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"preset {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line})",
            hint="save the file as UTF-8",
        ) from e
    try:
        data = load_yaml_unique(text)
    except ConfigError as e:
        raise ConfigError(f"preset {path}: {e.message}", hint=e.hint) from e
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"preset {path} is not valid YAML: {e}".replace("\n", " ")) from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of keys, got {type(data).__name__}")
    try:  # round-trip through OmegaConf so interpolation syntax is checked early
        OmegaConf.create(data)
    except OmegaConfBaseException as e:
        raise ConfigError(f"preset {path}: {e}".splitlines()[0]) from e
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_preset_chain(path: Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """Load a preset and everything it `extends:`, parent first. Returns (merged dict, chain)."""
    path = path.resolve()
    if path in _seen:
        cycle = " -> ".join(p.stem for p in (*_seen, path))
        raise ConfigError(f"presets extend each other in a cycle: {cycle}")
    data = read_yaml(path)
    data.pop(SOURCE_KEY, None)  # metadata (read by `preset_source`), never merged
    parent_ref = data.pop(EXTENDS_KEY, None)
    if parent_ref is None:
        return data, [path]
    if not isinstance(parent_ref, str):
        raise ConfigError(f"{path}: '{EXTENDS_KEY}' must be a preset name or path")
    parent_path = resolve_preset(parent_ref, relative_to=path.parent)
    parent, chain = load_preset_chain(parent_path, (*_seen, path))
    return _deep_merge(parent, data), [*chain, path]


def parse_source(raw: Any, where: str) -> dict[str, Any]:
    """Check a `source:` block against `schema.PresetSource`; returns it as a plain dict."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from archer.core.config.schema import PresetSource, SourceDifference

    fields = ", ".join(PresetSource.__dataclass_fields__)
    hint = f"a source block has: {fields} (docs/recipes.md)"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'source' must be a mapping, got {type(raw).__name__}", hint=hint)
    raw = dict(raw)
    if isinstance(raw.get("script"), str):
        raw["script"] = [raw["script"]]
    diffs = raw.get("differences")
    if isinstance(diffs, list):
        raw["differences"] = [
            {**d, "revert": [d["revert"]]} if isinstance(d, dict) and isinstance(d.get("revert"), str) else d
            for d in diffs
        ]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(PresetSource), raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if key and "not in" in text:
            diff_fields = ", ".join(SourceDifference.__dataclass_fields__)
            raise ConfigError(
                f"{where}: unknown key 'source.{key}'",
                hint=f"{hint}; each difference has: {diff_fields}",
            ) from e
        raise ConfigError(f"{where}: source: {text}", hint=hint) from e
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(
            f"{where}: the source block needs {', '.join('source.' + m for m in missing)}", hint=hint
        )
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


def preset_source(chain: list[Path]) -> tuple[dict[str, Any] | None, Path | None]:
    """The `source:` block of the last preset of `chain` that has one, and that preset's file
    (a preset without one extends a preset that reproduces something, but is not that run)."""
    for path in reversed(chain):
        raw = read_yaml(path).get(SOURCE_KEY)
        if raw is not None:
            return parse_source(raw, f"preset {path}"), path
    return None, None
