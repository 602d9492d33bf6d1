"""Config composition: presets, extends, overrides, struct-mode errors with suggestions."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from archer.core.config import compose, compose_dict, schema_keys
from archer.core.config.compose import parse_override, suggest_keys
from archer.core.config.presets import list_presets
from archer.errors import ConfigError, UsageError


def test_every_shipped_preset_composes():
    presets = list_presets()
    assert {"quickstart", "math"} <= set(presets)
    for name in presets:
        c = compose(name)
        assert c.preset == name
        assert c.cfg.engine in ("local", "verl")


def test_quickstart_is_the_chain_task_and_the_arith_presets_keep_the_old_one():
    """`archer train --preset quickstart` runs the worked chains (issue 22); quickstart-influence
    traces that run; the arithmetic pair the small tests and quickstart-verl use shares its
    influence settings with quickstart-influence (one preset's edit must not drift from the other)."""
    qs, qi = compose("quickstart").cfg, compose("quickstart-influence").cfg
    assert qs.data.synth.task == qi.data.synth.task == "chain" and qs.reward.function == "chain"
    assert qs.warmup == qi.warmup and qs.trainer.total_steps == qi.trainer.total_steps
    assert not qs.influence.enable and qi.influence.enable
    arith, arith_infl = compose("quickstart-arith").cfg, compose("quickstart-arith-influence").cfg
    assert arith.data.synth.task == arith_infl.data.synth.task == "arithmetic"
    assert OmegaConf.to_container(arith_infl.influence) == OmegaConf.to_container(qi.influence)
    assert compose("quickstart-verl").cfg.data.synth.task == "arithmetic"


def test_override_sets_typed_values():
    c = compose("quickstart", ["trainer.total_steps=7", "rollout.temperature=0.5", "model.path=null"])
    assert c.cfg.trainer.total_steps == 7 and isinstance(c.cfg.trainer.total_steps, int)
    assert c.cfg.rollout.temperature == 0.5
    assert c.cfg.model.path is None


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError) as e:
        compose("quickstart", ["trainer.total_step=3"])
    msg = e.value.message
    assert "trainer.total_step" in msg and "trainer.total_steps" in msg
    assert e.value.exit_code == 2


def test_unknown_key_in_wrong_section_suggests_same_name_elsewhere():
    assert suggest_keys("trainer.lr")[0] == "actor.optim.lr"


def test_unknown_key_always_gets_a_suggestion():
    with pytest.raises(ConfigError) as e:
        compose("quickstart", ["trainer.nonexistent=1"])
    assert "trainer.nonexistent" in e.value.message
    assert "Did you mean 'trainer." in e.value.message


def test_wrong_type_names_key_type_and_value():
    with pytest.raises(ConfigError) as e:
        compose("quickstart", ["trainer.total_steps=abc"])
    assert "'trainer.total_steps' expects int" in e.value.message
    assert "abc" in e.value.message


def test_value_outside_choices_lists_them():
    with pytest.raises(ConfigError) as e:
        compose("quickstart", ["actor.loss_agg_mode=token-sum"])
    msg = e.value.message
    assert "actor.loss_agg_mode" in msg and "seq-mean-token-mean" in msg and "token-sum" in msg


def test_bounds_are_checked():
    with pytest.raises(ConfigError, match="rollout.top_p"):
        compose("quickstart", ["rollout.top_p=1.5"])
    with pytest.raises(ConfigError, match="trainer.total_steps"):
        compose("quickstart", ["trainer.total_steps=0"])


def test_cross_key_rules():
    with pytest.raises(ConfigError, match="ppo_mini_batch_size"):
        compose("quickstart", ["data.train_batch_size=10", "actor.ppo_mini_batch_size=4"])
    with pytest.raises(ConfigError, match="rollout.n"):
        compose("quickstart", ["rollout.n=1"])


def test_tilde_deletes_preset_value_back_to_schema_default():
    base = compose("quickstart")
    assert base.cfg.warmup.steps != 300  # the preset overrides the schema default
    c = compose("quickstart", ["~warmup.steps"])
    assert c.cfg.warmup.steps == 300


def test_plus_prefix_is_accepted_and_free_sections_take_new_keys():
    c = compose("quickstart", ["+trainer.total_steps=3", "verl.trainer.nnodes=2"])
    assert c.cfg.trainer.total_steps == 3
    assert c.cfg.verl.trainer.nnodes == 2


def test_scalar_for_list_key_becomes_a_list():
    c = compose("quickstart", ["data.train_files=/tmp/x.parquet"])
    assert list(c.cfg.data.train_files) == ["/tmp/x.parquet"]


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("trainer.total_steps")
    with pytest.raises(ConfigError, match="not an override"):
        parse_override("--dry-run")


def test_extends_chain_and_cycle(tmp_path, monkeypatch):
    (tmp_path / "base.yaml").write_text("extends: quickstart\ntrainer:\n  total_steps: 11\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nrollout:\n  n: 8\n")
    c = compose(str(tmp_path / "child.yaml"))
    assert c.cfg.trainer.total_steps == 11 and c.cfg.rollout.n == 8
    assert c.cfg.model.tiny.hidden_size == compose("quickstart").cfg.model.tiny.hidden_size
    assert [p.name for p in c.chain] == ["quickstart.yaml", "base.yaml", "child.yaml"]
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        compose(str(tmp_path / "a.yaml"))


def test_preset_path_env_and_unknown_key_in_file(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("extends: quickstart\ntrainer:\n  totl_steps: 3\n")
    monkeypatch.setenv("ARCHER_PRESET_PATH", str(tmp_path))
    assert "mine" in list_presets()
    with pytest.raises(ConfigError) as e:
        compose("mine")
    assert "trainer.totl_steps" in e.value.message and "mine.yaml" in e.value.message


def test_unknown_preset_suggests():
    with pytest.raises(UsageError) as e:
        compose("quikstart")
    assert "quickstart" in e.value.message and e.value.exit_code == 2


def test_missing_values_are_reported_and_required():
    c = compose("math")
    assert "model.path" in c.missing()
    with pytest.raises(ConfigError, match="model.path"):
        c.require_complete()
    c2 = compose("math", ["model.path=/models/x", "data.train_files=[a.parquet]"])
    c2.require_complete()


def test_resolved_yaml_round_trips():
    c = compose("math", ["model.path=/m", "data.train_files=[t.parquet]", "rollout.n=8"])
    text = c.to_yaml()
    data = yaml.safe_load(text)
    again = compose_dict(data)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(c.cfg)


def test_interpolation_resolves():
    c = compose("quickstart", ["trainer.run_name=run-${seed}", "seed=5"])
    assert c.to_dict()["trainer"]["run_name"] == "run-5"


def test_every_leaf_key_has_a_doc_line():
    undocumented = [k for k, info in schema_keys().items() if not info.help]
    assert undocumented == []


def test_config_reference_is_up_to_date():
    from pathlib import Path

    from archer.core.config.docs import render_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == render_markdown(), (
        "regenerate: python -m archer.cli.config_docs > docs/config.md"
    )


def test_config_reference_entry_point_writes_the_reference():
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "archer.cli.config_docs"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from archer.core.config.docs import render_markdown

    assert r.stdout == render_markdown() and r.stdout.startswith("# Configuration reference")
