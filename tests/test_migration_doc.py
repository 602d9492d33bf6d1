"""docs/migrating-from-archer2.md cannot rot: every archer command, option, preset and config key
named in its "archer" columns exists (commands and options in the Typer app, keys and values in the
config schema, `archer train` lines compose), every environment variable named there is one archer
reads or passes on, and every knob of Archer2.0's `trainer.influence_trace.*` has a row."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from archer.cli.main import app
from archer.core.config import compose
from archer.core.config.compose import schema_keys

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "migrating-from-archer2.md"

# Archer2.0's influence knobs (its OVERVIEW.md and the influence-trace run script)
ARCHER2_INFLUENCE_KNOBS = [
    "enable",
    "hessian_mode",
    "output_function",
    "accepted_rejected_scope",
    "contrastive_agg",
    "hessian_source",
    "module_name_filter",
    "max_modules",
    "projection_dim_factor",
    "max_proj_vector_sum",
    "max_hessian_dim",
    "max_tokens_per_response",
    "grad_offload_to_cpu",
    "force_gpu_compute",
    "profile_timing",
    "max_prompts_per_step",
    "reg_lambda",
    "exclude_self_response",
    "skip_optimizer_step",
    "output_dir",
    "write_every",
    "atomic_write",
    "fsync",
]
ARCHER2_SCRIPTS = [
    "run_archer2.0_qwen2.5_1.5b_math.sh",
    "run_archer2.0_qwen2.5_1.5b_code.sh",
    "run_archer2.0_qwen2.5_1.5b_math_entropy_trace.sh",
    "run_archer2.0_qwen2.5_1.5b_math_influence_trace.sh",
    "run_single_influence_case_0220.sh",
    "run_single_baseline_case_0220.sh",
    "run_influence_ablation_0220.sh",
    "run_influence_ablation_0220_extra_nohessian.sh",
    "collect_influence_ablation_results_0220.py",
    "visualize_rollout_entropy.py",
]


def table_rows() -> list[tuple[str, str]]:
    """(Archer2.0 cell, archer cell) of every table whose header has an "archer" column."""
    rows, col = [], None
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            col = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if col is None:
            col = cells.index("archer") if "archer" in cells else -1
            continue
        if col < 0 or set("".join(cells)) <= set("-: "):
            continue
        rows.append((cells[0], cells[col]))
    return rows


def archer_spans() -> list[str]:
    return [s for _, cell in table_rows() for s in re.findall(r"`([^`]+)`", cell)]


def click_tree():
    import typer.main

    return typer.main.get_command(app)


def resolve(words: list[str]):
    """The leaf command that `archer WORDS...` runs, and the words after its name."""
    cmd, i = click_tree(), 0
    while i < len(words) and hasattr(cmd, "commands") and words[i] in cmd.commands:
        cmd, i = cmd.commands[words[i]], i + 1
    assert not hasattr(cmd, "commands"), f"'archer {' '.join(words)}' names no command"
    return cmd, words[i:]


KEY = re.compile(r"^~?[a-z_]+(\.[a-z0-9_]+)+(=.*)?$")
ENV = re.compile(r"^[A-Z][A-Z0-9_]+$")


def check_key(token: str) -> None:
    key = token.split("=", 1)[0].lstrip("~")
    if key.startswith("verl."):
        return  # verl's own keys, passed through (checked by verl at --dry-run)
    assert key in schema_keys() and not schema_keys()[key].is_section, f"no config key {key!r}"
    if "=" in token:
        compose("quickstart", [token])  # the value is one the key takes


def check_command(text: str) -> None:
    words = shlex.split(text)
    assert words[0] == "archer"
    cmd, rest = resolve(words[1:])
    options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
    overrides, preset = [], None
    it = iter(range(len(rest)))
    for i in it:
        w = rest[i]
        if w.startswith("-"):
            assert w in options, f"'{text}': {cmd.name} has no option {w}"
            if w in ("--preset", "-p"):
                preset = rest[i + 1]
        elif KEY.match(w) and "=" in w:
            check_key(w)
            overrides.append(w)
    if cmd.name == "train" and preset is not None:
        c = compose(preset, overrides)  # the whole line composes: preset, keys and values together
        assert c.cfg is not None
    if preset is not None:
        from archer.core.config.presets import list_presets

        assert preset in list_presets(), f"no preset {preset!r}"


def test_the_doc_has_the_tables():
    rows = table_rows()
    assert len(rows) > 60
    assert sum(1 for _, c in rows if c.startswith("`archer ")) > 20


def test_every_archer_command_option_and_preset_exists():
    commands = [s for s in archer_spans() if s.startswith("archer ")]
    assert len(commands) > 20
    for text in commands:
        check_command(text)


def test_every_config_key_and_value_exists():
    keys = [s for s in archer_spans() if KEY.match(s)]
    assert len(keys) > 30
    for token in keys:
        check_key(token)


def test_every_environment_variable_is_one_archer_reads_or_passes_on():
    source = "\n".join(p.read_text() for p in (ROOT / "archer").rglob("*.py"))
    envs = [s for s in archer_spans() if ENV.match(s)]
    assert "ARCHER_PG_TIMEOUT_SECONDS" in envs
    for name in envs:
        assert f'"{name}"' in source, f"archer never names {name}"


def test_run_paths_are_ones_archer_writes():
    source = "\n".join(p.read_text() for p in (ROOT / "archer").rglob("*.py"))
    paths = [s for s in archer_spans() if s.startswith("<run>/")]
    assert "<run>/trace/" in paths
    for path in paths:
        name = path.split("/")[1]
        assert f'"{name}"' in source, f"archer writes no {name!r} in a run directory"


def test_nothing_unchecked_hides_in_the_archer_column():
    for span in archer_spans():
        if span.startswith("docs/"):
            assert (ROOT / span).is_file(), span
            continue
        assert span.startswith(("archer ", "<run>/")) or KEY.match(span) or ENV.match(span), span


def test_every_archer2_influence_knob_and_script_has_a_row():
    firsts = " ".join(a for a, _ in table_rows())
    for knob in ARCHER2_INFLUENCE_KNOBS:
        assert f"trainer.influence_trace.{knob}" in firsts, knob
        env = "INFLUENCE_" + knob.upper()
        if knob not in (
            "enable",
            "contrastive_agg",
            "hessian_source",
            "output_dir",
            "write_every",
            "atomic_write",
            "fsync",
        ):
            assert env in firsts, env  # the run script's variable for it
    for script in ARCHER2_SCRIPTS:
        assert script in firsts, script


@pytest.mark.parametrize("bad", ["archer trian --preset math", "archer view runs/x --bogus"])
def test_the_checker_catches_a_wrong_command(bad):
    with pytest.raises(AssertionError):
        check_command(bad)


@pytest.mark.parametrize("bad", ["influence.hesian_mode=inverse", "influence.hessian_mode=bogus"])
def test_the_checker_catches_a_wrong_key_or_value(bad):
    from archer.errors import ArcherError

    with pytest.raises((AssertionError, ArcherError)):
        check_key(bad)
