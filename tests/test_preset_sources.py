"""Presets that reproduce a public run pin, value by value, what that run fixes; their `source:` block
(metadata, not config) names the run and the differences kept on purpose, each of which can be
switched back; `archer presets ls/show` show it.

The tables cite the source files as `ABBR:line`; the abbreviations (paths inside each repository):
  A2M   wizard-III/Archer2.0 b08d963  scripts/train/run_archer2.0_qwen2.5_1.5b_math.sh
  A2C   wizard-III/Archer2.0 b08d963  scripts/train/run_archer2.0_qwen2.5_1.5b_code.sh (A2M with other data:
        the same line numbers)
  A2DP  wizard-III/Archer2.0 b08d963  verl/workers/actor/dp_actor.py
  A2FW  wizard-III/Archer2.0 b08d963  verl/workers/fsdp_workers.py
  A2Y   wizard-III/Archer2.0 b08d963  verl/trainer/config/ppo_trainer.yaml
  A2T   wizard-III/Archer2.0 b08d963  dapo/dapo_ray_trainer.py
  TIM   doub7e/token-influence b6a3f7e scripts/train/run_archer2.0_qwen2.5_1.5b_math.sh (A2M + one line at 61:
        lines after 61 are A2M's + 1)
  TIE   doub7e/token-influence b6a3f7e scripts/train/run_archer2.0_qwen2.5_1.5b_math_entropy_trace.sh
  TII   doub7e/token-influence b6a3f7e scripts/train/run_archer2.0_qwen2.5_1.5b_math_influence_trace.sh
  TIDP  doub7e/token-influence b6a3f7e verl/workers/actor/dp_actor.py
  ACR   wizard-III/ArcherCodeR 8a1785b scripts/train/run_archer_qwen2.5_1.5b_code.sh
  ARPO  RUC-NLPIR/ARPO a95cd08 ARPO/scripts/ARPO_7B_Reasoning_1node.sh
  ARY   RUC-NLPIR/ARPO a95cd08 ARPO/scripts/config/ppo_trainer.yaml
  ARR   RUC-NLPIR/ARPO a95cd08 ARPO/verl_arpo_entropy/verl/workers/rollout/vllm_rollout/
        vllm_rollout_with_tools.py
  AEPO  RUC-NLPIR/ARPO 30efc15 (via wangevan6/ARPO adacf0c) AEPO/scripts/AEPO_Qwen25_7B_DeepResearch.sh
  AEY   same tree, AEPO/scripts/config/ppo_trainer.yaml
  AER   same tree, AEPO/verl_aepo_entropy/verl/workers/rollout/vllm_rollout/vllm_rollout_with_tools.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.config import compose, schema_keys
from archer.core.config.compose import _get
from archer.core.config.presets import list_presets
from archer.errors import ConfigError

runner = CliRunner()

# preset -> the run it reproduces (repository, commit), as its source block must say
SOURCES = {
    "math": ("wizard-III/Archer2.0", "b08d963"),
    "code": ("wizard-III/Archer2.0", "b08d963"),
    "math-grpo": ("doub7e/token-influence", "b6a3f7e"),
    "math-entropy": ("doub7e/token-influence", "b6a3f7e"),
    "math-influence": ("doub7e/token-influence", "b6a3f7e"),
    "archer-code": ("wizard-III/ArcherCodeR", "8a1785b"),
    "arpo": ("RUC-NLPIR/ARPO", "a95cd08"),
    "aepo": ("RUC-NLPIR/ARPO", "30efc15"),
}

# -- Archer2.0 math, ASPO ---------------------------------------------------------------------------
A2_RECIPE = [
    ("algorithm.adv_estimator", "grpo"),  # A2M:9
    ("algorithm.norm_adv_by_std_in_grpo", True),  # A2Y:749
    ("actor.use_kl_loss", True),  # A2M:14
    ("actor.kl_loss_coef", 0.001),  # A2M:15
    ("actor.kl_loss_type", "low_var_kl"),  # A2M:16
    # A2M:21 token-mean, over micro-batches of one response (A2M:54-55), divided by the gradient
    # accumulation (A2DP:366,474-476): a mean over responses of their token means
    ("actor.loss_agg_mode", "seq-mean-token-mean"),
    ("data.max_prompt_length", 2048),  # A2M:23
    ("rollout.max_new_tokens", 32768),  # A2M:24
    ("algorithm.overlong_buffer.enable", True),  # A2M:25
    ("algorithm.overlong_buffer.len", 16),  # A2M:26
    ("algorithm.overlong_buffer.penalty_factor", 1.0),  # A2M:27
    ("data.train_batch_size", 64),  # A2M:30-31 (generation batch = training batch)
    ("actor.ppo_mini_batch_size", 16),  # A2M:32
    ("rollout.n", 16),  # A2M:42
    ("rollout.temperature", 1.0),  # A2M:43
    ("rollout.top_p", 1.0),  # A2M:44
    ("rollout.top_k", 0),  # A2M:45 top_k=-1 (vLLM's "off"; archer's off is 0)
    ("rollout.val.n", 4),  # A2M:46
    ("rollout.val.temperature", 0.6),  # A2M:47
    ("rollout.val.top_p", 0.95),  # A2M:48
    ("actor.optim.lr", 1e-6),  # A2M:112
    ("actor.optim.warmup_steps", 10),  # A2M:113
    ("actor.optim.schedule", "constant"),  # A2Y:245 warmup_style constant
    ("actor.optim.weight_decay", 0.1),  # A2M:114
    ("actor.optim.betas", [0.9, 0.999]),  # A2FW:353 (AdamW default)
    ("actor.ppo_epochs", 3),  # A2M:115
    ("actor.entropy_coeff", 0.0),  # A2M:119
    ("actor.optim.grad_clip", 1.0),  # A2M:120
    ("trainer.val_before_train", False),  # A2M:150
    ("algorithm.filter_groups.enable", True),  # A2M:158 rejection_sample=True; A2T:193-221
    ("algorithm.filter_groups.max_num_gen_batches", 1),  # A2T:217-222: no second generation round
    ("verl.trainer.nnodes", 1),  # A2M:4
    ("verl.trainer.n_gpus_per_node", 8),  # A2M:147
]
ASPO = [
    ("actor.policy_loss", "aspo"),  # A2M:61 use_archer_policy_loss=True -> compute_policy_loss_archer
    ("actor.archer.token_entropy_quantile", 0.8),  # A2M:63, A2DP:404
    ("actor.archer.low_entropy_clip_ratio_low", 0.2),  # A2DP:417 (hard-coded)
    ("actor.archer.high_entropy_clip_ratio_low", 0.4),  # A2DP:418
    ("actor.archer.low_entropy_clip_ratio_high", 0.2),  # A2DP:419
    ("actor.archer.high_entropy_clip_ratio_high", 0.4),  # A2DP:420
    ("actor.clip_ratio_c", 3.0),  # A2DP:421 negative_clip_ratio_c=3.0 (A2M:93 sets 3.0 as well)
    ("actor.aspo_dual_clip", 3.0),  # A2DP:422 positive_clip_ratio_c=3.0
    # A2DP:456-463: the KL split needs use_token_entropy_separate, which no script sets (TIDP:911-923
    # reads it as False): low_var_kl on every token
    ("actor.archer.high_entropy_kl_scale", 1.0),
]
A2_MATH = [*A2_RECIPE, *ASPO, ("reward.function", "math")]  # A2M:38 archer2.0-math data
A2_CODE = [*A2_RECIPE, *ASPO, ("reward.function", "code")]  # A2C:38 archer2.0-code data

# -- the token-influence fork: Archer2.0's math script with vanilla GRPO -----------------------------
TI_MATH = [
    *[(k, v) for k, v in A2_RECIPE],  # TIM = A2M, the same values (lines after 61 shifted by one)
    ("actor.policy_loss", "vanilla"),  # TIM:62 use_archer_policy_loss=False -> compute_policy_loss
    ("actor.clip_ratio_c", 3.0),  # TIM:94
    ("reward.function", "math"),
]
TI_ENTROPY = [
    *[(k, v) for k, v in TI_MATH if k != "actor.ppo_epochs"],
    ("actor.ppo_epochs", 1),  # TIE:15
    ("trainer.total_steps", 100),  # TIE:17
    ("trace.enable", True),  # TIE:18 entropy_trace.enable=True
]
TI_INFLUENCE = [
    *[(k, v) for k, v in TI_MATH if k not in ("actor.ppo_epochs", "actor.ppo_mini_batch_size")],
    ("actor.ppo_epochs", 1),  # TII:12
    ("influence.enable", True),  # TII:48
    ("influence.hessian_mode", "inverse"),  # TII:16
    ("influence.output_function", "training_loss"),  # TII:17
    ("influence.accepted_rejected_scope", "per_prompt"),  # TII:18
    ("influence.max_tokens_per_response", 0),  # TII:24 (-1 = every token; archer's 0)
    ("influence.force_gpu_compute", True),  # TII:27
    ("influence.contrastive_agg", "sum"),  # TII:30
    ("influence.hessian_source", "response"),  # TII:31
]

# -- ArcherCodeR (Archer 1) ------------------------------------------------------------------------
ACR_CODE = [
    ("algorithm.adv_estimator", "grpo"),  # ACR:9
    ("actor.use_kl_loss", True),  # ACR:14
    ("actor.kl_loss_coef", 0.001),  # ACR:15
    ("actor.kl_loss_type", "low_var_kl"),  # ACR:16
    ("actor.clip_ratio_low", 0.2),  # ACR:19
    ("actor.clip_ratio_high", 0.2),  # ACR:20
    ("actor.loss_agg_mode", "seq-mean-token-mean"),  # ACR:21 token-mean over one response (ACR:54-55)
    ("data.max_prompt_length", 2048),  # ACR:23
    ("rollout.max_new_tokens", 32768),  # ACR:24
    ("algorithm.overlong_buffer.enable", False),  # ACR:25
    ("data.train_batch_size", 64),  # ACR:30
    ("actor.ppo_mini_batch_size", 32),  # ACR:32
    ("rollout.n", 16),  # ACR:42
    ("rollout.temperature", 1.0),  # ACR:43
    ("rollout.top_p", 1.0),  # ACR:44
    ("rollout.val.n", 4),  # ACR:46
    ("rollout.val.temperature", 0.8),  # ACR:47
    ("rollout.val.top_p", 1.0),  # ACR:48
    ("actor.policy_loss", "archer"),  # ACR:61 use_token_entropy_separate=True
    ("actor.archer.token_entropy_quantile", 0.8),  # ACR:62
    ("actor.archer.high_entropy_kl_scale", 0.0),  # ACR:63
    ("actor.archer.low_entropy_clip_ratio_low", 0.2),  # ACR:64
    ("actor.archer.low_entropy_clip_ratio_high", 0.2),  # ACR:65
    ("actor.archer.high_entropy_clip_ratio_low", 0.5),  # ACR:66
    ("actor.archer.high_entropy_clip_ratio_high", 0.5),  # ACR:67
    ("actor.clip_ratio_c", 10.0),  # ACR:92
    ("actor.optim.lr", 1e-6),  # ACR:111
    ("actor.optim.warmup_steps", 10),  # ACR:112
    ("actor.optim.weight_decay", 0.1),  # ACR:113
    ("actor.ppo_epochs", 3),  # ACR:114
    ("actor.entropy_coeff", 0.0),  # ACR:118
    ("actor.optim.grad_clip", 1.0),  # ACR:119
    ("algorithm.filter_groups.enable", True),  # ACR:157 rejection_sample=True
    ("trainer.val_before_train", False),  # ACR:149
    ("verl.trainer.nnodes", 2),  # ACR:4
    ("verl.trainer.n_gpus_per_node", 8),  # ACR:146
    ("reward.function", "code"),  # ACR:38 archercoder code data
]

# -- ARPO 7B reasoning -------------------------------------------------------------------------------
ARPO_7B = [
    ("algorithm.adv_estimator", "grpo"),  # ARPO:105
    ("algorithm.norm_adv_by_std_in_grpo", True),  # ARY:264
    ("data.train_batch_size", 128),  # ARPO:38
    ("actor.ppo_mini_batch_size", 16),  # ARPO:39
    ("data.max_prompt_length", 1536),  # ARPO:40
    ("rollout.max_new_tokens", 4096),  # ARPO:41
    ("rollout.n", 16),  # ARPO:55
    ("agent.initial_rollouts", 8),  # ARPO:56
    ("agent.beam_size", 2),  # ARPO:57
    ("agent.branch_probability", 0.5),  # ARPO:58
    ("agent.entropy_weight", 0.2),  # ARPO:59
    ("agent.entropy_tokens", 20),  # ARR:291 min(20, len(tokens))
    ("agent.entropy_topk", 10),  # ARR:114 logprobs = 10
    ("agent.refill", "one"),  # ARR:491-508 one fresh rollout per iteration
    ("agent.max_turns", 3),  # ARY:153 call_limit
    ("agent.tools.python.timeout_s", 120.0),  # ARY:155
    ("agent.tools.search.top_k", 10),  # ARY:173 max_results
    ("agent.tools.search.max_chars", 10000),  # ARY:173-174 10 results of at most 1000 characters
    ("reward.function", "f1"),  # ARPO:66-67 deep_research.compute_score
    ("reward.by_source", {}),  # the same function for every row (train_10k.parquet: one data_source)
    ("actor.policy_loss", "vanilla"),
    ("actor.clip_ratio_low", 0.2),  # ARY:52
    ("actor.clip_ratio_high", 0.2),  # ARY:53
    ("actor.clip_ratio_c", 3.0),  # ARY:54
    ("actor.loss_agg_mode", "token-mean"),  # ARY:55 (dynamic batches, ARPO:118: a true token mean)
    ("actor.entropy_coeff", 0.0),  # ARY:56
    ("actor.ppo_epochs", 1),  # ARY:61 (TOTAL_EPOCHS=2, ARPO:71, counts data epochs)
    ("actor.optim.lr", 1e-6),  # ARPO:116
    ("actor.optim.warmup_steps", 0),  # ARY:68-69
    ("actor.optim.schedule", "constant"),  # ARY:72
    ("actor.optim.weight_decay", 0.01),  # ARY:74
    ("actor.optim.grad_clip", 1.0),  # ARY:49
    ("actor.use_kl_loss", False),  # ARPO:120-121 use_kl_loss=True with kl_loss_coef=0.0: no KL
    ("rollout.temperature", 1.0),  # ARY:102
    ("rollout.top_k", 0),  # ARY:103 (-1 = off)
    ("rollout.top_p", 1.0),  # ARY:104
    ("rollout.val.n", 1),  # ARY:144
    ("rollout.val.temperature", 0.0),  # ARY:143, 145 greedy (do_sample False)
    ("rollout.val.top_p", 1.0),  # ARY:142
    ("trainer.val_every", 5),  # ARPO:73 TEST_FREQ=5
    ("trainer.val_before_train", False),  # ARPO:153
    ("agent.algorithm", "arpo"),  # ARPO:54 rollout mode sync_with_tool
]

# -- AEPO Qwen2.5-7B deep research ------------------------------------------------------------------
AEPO_7B = [
    *[(k, v) for k, v in ARPO_7B if k not in ("agent.algorithm", "agent.max_turns", "actor.policy_loss")],
    # (AEPO:38-41, 60-64, 122, 127-128 set the same budget and optimiser values as ARPO:38-41, 55-59)
    ("agent.algorithm", "aepo"),  # AEPO:59 sync_with_tool, AEY:157 AEPO's rollout
    ("agent.max_turns", 6),  # AEY:161 call_limit
    ("agent.aepo.dynamic_rollouts", False),  # AEPO:52 ENABLE_DYNAMIC_ROLLOUTS=False
    ("agent.aepo.consecutive_penalty", 0.05),  # AER:953 1.0 - 0.05 * consecutive_branches
    ("agent.aepo.consecutive_count", "iteration"),  # AER:1025-1036
    ("actor.policy_loss", "aepo"),  # AEPO:53 ENABLE_ENTROPY_BALANCED_CLIPPING=True
    ("actor.clip_ratio_low", 0.2),  # AEY:56
    ("actor.clip_ratio_high", 0.2),  # AEY:57
    ("actor.ppo_epochs", 1),  # AEY:65
    ("rollout.val.temperature", 0.0),  # AEY:147
    ("reward.function", "f1"),  # AEPO:71-72 deep_research.compute_score
    ("trainer.val_before_train", False),  # AEPO:159
]

PINS = {
    "math": A2_MATH,
    "code": A2_CODE,
    "math-grpo": TI_MATH,
    "math-entropy": TI_ENTROPY,
    "math-influence": TI_INFLUENCE,
    "archer-code": ACR_CODE,
    "arpo": ARPO_7B,
    "aepo": AEPO_7B,
}


def _value(values: dict, key: str):
    return _get(values, key)


@pytest.mark.parametrize("preset", sorted(PINS))
def test_preset_pins_every_value_its_source_fixes(preset):
    c = compose(preset)
    values = c.to_dict()
    wrong = []
    for key, expected in PINS[preset]:
        got = _value(values, key)
        same = got == pytest.approx(expected) if isinstance(expected, float) else got == expected
        if not same:
            wrong.append(f"{key}: preset {got!r}, source {expected!r}")
    assert not wrong, f"{preset} drifted from {SOURCES[preset][0]}:\n" + "\n".join(wrong)
    assert (c.source["repository"], c.source["commit"]) == SOURCES[preset]
    assert c.source_path == c.preset_path  # its own block, not a parent's


def test_every_preset_with_a_source_is_pinned_and_every_pinned_preset_has_one():
    sourced = {name for name in list_presets() if compose(name).source_path == list_presets()[name]}
    assert sourced == set(PINS)


def test_archer_loss_defaults_are_archer2s_aspo_constants():
    """The `actor.archer.*` section serves the `archer` and `aspo` losses; its defaults are the values
    Archer2.0 hard-codes for ASPO (A2DP:404,417-422). ArcherCodeR's values (high-entropy clips 0.5,
    dual clip 10) are the `archer-code` preset's (pinned above)."""
    defaults = compose_defaults()
    for key, value in ASPO:
        if key not in ("actor.policy_loss", "actor.archer.high_entropy_kl_scale"):
            assert _value(defaults, key) == value, key
    assert _value(defaults, "actor.archer.high_entropy_kl_scale") == 0.0  # Archer 1's split, for `archer`


def compose_defaults() -> dict:
    from omegaconf import OmegaConf

    from archer.core.config.schema import ArcherConfig

    return OmegaConf.to_container(OmegaConf.structured(ArcherConfig))


@pytest.mark.parametrize("preset", sorted(PINS))
def test_every_difference_names_real_keys_and_can_be_switched_back(preset):
    c = compose(preset)
    values = c.to_dict()
    pinned = {k for k, _ in PINS[preset]}
    for d in c.source["differences"]:
        assert d["source"] and d["why"] and "\n" not in d["why"]
        for key in (k.strip() for k in d["key"].split(",")):
            if key.startswith("verl."):
                assert _value(values, key) is not None, key
            else:
                assert key in schema_keys(), f"{preset}: difference on unknown key {key}"
            if d[
                "revert"
            ]:  # a value kept different; without a revert: the same value, another implementation
                assert key not in pinned, f"{preset}: {key} is both pinned to the source and a difference"
        if d["revert"]:
            reverted = compose(preset, d["revert"]).to_dict()
            changed = [k.partition("=")[0] for k in d["revert"]]
            assert any(_value(reverted, k) != _value(values, k) for k in changed), d["revert"]


def test_source_block_is_metadata_not_config(tmp_path):
    c = compose("math")
    assert "source" not in c.to_dict() and "source" not in yaml.safe_load(c.to_yaml())
    with pytest.raises(ConfigError, match="unknown config key 'source'"):
        compose("math", ["source.name=mine"])
    child = tmp_path / "mine.yaml"
    child.write_text("extends: math\nactor:\n  ppo_epochs: 1\n")
    c = compose(str(child))
    assert c.source["name"] == "Archer2.0 math (ASPO)" and c.source_path.stem == "math"  # shown as math's


@pytest.mark.parametrize(
    "block,message",
    [
        ("source: just a string\n", "'source' must be a mapping"),
        ("source:\n  name: x\n  repository: o/r\n  commit: abc\n", "needs source.script"),
        (
            "source:\n  name: x\n  repository: o/r\n  commit: abc\n  script: s.sh\n  licence: MIT\n",
            "unknown key 'source.licence'",
        ),
        (
            "source:\n  name: x\n  repository: o/r\n  commit: abc\n  script: s.sh\n"
            "  differences:\n    - key: actor.ppo_epochs\n      why: faster\n",
            "needs source.differences[0].source",
        ),
    ],
)
def test_a_bad_source_block_is_a_config_error_with_the_fields_in_the_hint(tmp_path, block, message):
    path = tmp_path / "bad.yaml"
    path.write_text("extends: quickstart\n" + block)
    with pytest.raises(ConfigError) as e:
        compose(str(path))
    assert message in e.value.message and "bad.yaml" in e.value.message
    assert "repository" in e.value.hint and e.value.exit_code == 2


def test_a_source_block_with_a_single_script_and_revert_is_accepted(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "extends: quickstart\nsource:\n  name: x\n  repository: o/r\n  commit: abc\n  script: s.sh\n"
        "  differences:\n    - key: actor.ppo_epochs\n      source: 'ppo_epochs=2 (s.sh:3)'\n"
        "      why: faster\n      revert: actor.ppo_epochs=2\n"
    )
    c = compose(str(path))
    assert c.source["script"] == ["s.sh"] and c.source["differences"][0]["revert"] == ["actor.ppo_epochs=2"]


def test_presets_ls_names_the_run_each_preset_reproduces():
    r = runner.invoke(app, ["presets", "ls", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["math"]["source"]["name"] == "Archer2.0 math (ASPO)"
    assert rows["math-grpo"]["source"]["repository"] == "doub7e/token-influence"
    assert rows["arpo"]["source"]["commit"] == "a95cd08"
    assert rows["quickstart"]["source"] is None
    table = runner.invoke(app, ["presets", "ls"], env={"COLUMNS": "400"})
    assert "Archer2.0 math (ASPO) · wizard-III/Archer2.0@b08d963" in table.stdout
    assert "reproduces" in table.stdout


def test_presets_show_prints_the_source_block_and_its_differences():
    r = runner.invoke(app, ["presets", "show", "math"])
    assert r.exit_code == 0, r.output
    shown = yaml.safe_load(r.stdout)  # the file as written, source block included
    assert shown["source"]["repository"] == "wizard-III/Archer2.0" and shown["source"]["commit"] == "b08d963"
    only = runner.invoke(app, ["presets", "show", "math", "--source"])
    block = yaml.safe_load(only.stdout)["source"]
    diffs = {d["key"]: d for d in block["differences"]}
    assert diffs["reward.function"]["archer"] == "reward.function=math"
    assert "general_reward.py" in diffs["reward.function"]["source"]
    resolved = runner.invoke(app, ["presets", "show", "math-influence", "--resolved"])
    assert resolved.exit_code == 0, resolved.output
    data = yaml.safe_load(resolved.stdout)  # the source comes as comments: still a loadable config
    assert data["actor"]["ppo_mini_batch_size"] == 64 and "source" not in data
    assert "# the preset's source" in resolved.stdout and "doub7e/token-influence" in resolved.stdout
    none = runner.invoke(app, ["presets", "show", "quickstart", "--source"])
    assert none.exit_code == 0 and "no source block" in none.stdout


def _recipes_sections() -> dict[str, str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    parts = re.split(r"^## `([\w-]+)`.*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_recipes_doc_matches_the_presets():
    """docs/recipes.md: a section per sourced preset whose settings rows equal the composed preset,
    and which names every difference kept on purpose and every override that switches one back."""
    sections = _recipes_sections()
    assert set(PINS) <= set(sections), f"no section in docs/recipes.md for {set(PINS) - set(sections)}"
    keys = schema_keys()
    row = re.compile(r"^\|[^|]*\| `([\w.]+)` \| `([^`]*)` \|", re.M)
    for preset in PINS:
        c = compose(preset)
        values, text = c.to_dict(), sections[preset]
        rows = row.findall(text)
        assert rows, f"{preset}: no settings table"
        for key, shown in rows:
            assert key in keys or key.startswith("verl."), f"{preset}: unknown key {key} in docs/recipes.md"
            expected, got = yaml.safe_load(shown), _value(values, key)
            same = got == pytest.approx(expected) if isinstance(expected, float) else got == expected
            assert same, f"docs/recipes.md, {preset}: {key} = {shown}, the preset has {got!r}"
        for d in c.source["differences"]:
            for key in (k.strip() for k in d["key"].split(",")):
                assert f"`{key}`" in text, f"docs/recipes.md, {preset}: difference {key} not listed"
            for override in d["revert"]:
                assert f"`{override}`" in text, f"docs/recipes.md, {preset}: no way back {override}"
