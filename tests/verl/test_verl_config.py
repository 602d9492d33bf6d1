"""Composing verl's config from archer's: the key mapping, `verl.*` pass-through and its
validation (unknown key -> exit 2 with the nearest verl keys), verl's own checks, `--dry-run` for
every verl preset (no Ray), and `archer train` refusing to start Ray where it cannot run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

from typer.testing import CliRunner  # noqa: E402

from archer.cli.main import app  # noqa: E402
from archer.core.config import compose  # noqa: E402
from archer.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.verl
runner = CliRunner()
REQUIRED = ["model.path=/models/qwen", "data.train_files=[/data/train.parquet]"]
VERL_PRESETS = ["math", "math-grpo", "math-entropy", "math-influence", "code", "archer-code", "arpo", "aepo"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A model directory and a training file that exist (the dry run checks both), 128 prompts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("inputs")
    (root / "model").mkdir()
    rows = [
        {"prompt": [{"role": "user", "content": f"{i}+1?"}], "reward_model": {"ground_truth": str(i + 1)}}
        for i in range(128)
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "train.parquet")
    return [f"model.path={root / 'model'}", f"data.train_files=[{root / 'train.parquet'}]"]


SDPA = "model.attn_implementation=sdpa"


def verl_config(preset: str, *overrides: str, run_dir: str = "/runs/r1", resume: bool = False):
    from archer.core.engines.verl.config import compose_verl

    return compose_verl(compose(preset, [*REQUIRED, *overrides]), Path(run_dir), resume=resume)


def test_archer_keys_map_onto_verl_keys():
    vc = verl_config(
        "math-influence",
        "rollout.top_k=0",
        "trainer.val_every=0",
        "data.val_files=[/data/val.parquet]",
        "trainer.keep_checkpoints=3",
        "model.dtype=fp32",
    )
    s = vc.select
    assert s("trainer.v1.trainer_mode") == "sync" and s("trainer.use_v1") is True
    assert s("actor_rollout_ref.model.path") == "/models/qwen" and s("data.train_files") == [
        "/data/train.parquet"
    ]
    assert s("data.val_files") == ["/data/val.parquet"] and s("data.max_response_length") == 32768
    assert s("data.train_batch_size") == 64 and s("actor_rollout_ref.rollout.n") == 16
    assert (
        s("actor_rollout_ref.actor.ppo_epochs") == 1
        and s("actor_rollout_ref.actor.ppo_mini_batch_size") == 64
    )
    assert (
        s("actor_rollout_ref.actor.use_kl_loss") is True
        and s("actor_rollout_ref.actor.kl_loss_coef") == 0.001
    )
    assert (
        s("actor_rollout_ref.actor.optim.lr") == 1e-6
        and s("actor_rollout_ref.actor.optim.lr_warmup_steps") == 10
    )
    assert s("actor_rollout_ref.rollout.top_k") == -1  # archer's 0 = off is verl's -1
    assert s("actor_rollout_ref.rollout.val_kwargs.temperature") == 0.6
    assert s("actor_rollout_ref.rollout.val_kwargs.do_sample") is True
    assert s("algorithm.adv_estimator") == "archer_grpo"
    assert s("reward.custom_reward_function.path") == "pkg://archer.core.rewards.verl_reward"
    assert s("reward.custom_reward_function.reward_kwargs.function") == "math"
    assert s("reward.reward_manager.name") == "dapo"  # overlong buffer on in the recipe
    assert (
        s("reward.reward_kwargs.overlong_buffer_cfg.len") == 16
        and s("reward.reward_kwargs.max_resp_len") == 32768
    )
    assert s("trainer.test_freq") == 500 and s("trainer.max_actor_ckpt_to_keep") == 3  # 0 = only at the end
    assert s("trainer.default_local_dir") == str(Path("/runs/r1").resolve() / "checkpoints")
    assert s("trainer.resume_mode") == "disable" and s("trainer.experiment_name") == "r1"
    assert s("actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype") == "fp32"
    assert s("actor_rollout_ref.rollout.dtype") == "float32"
    # the preset's verl section (infrastructure) passes through
    assert s("actor_rollout_ref.rollout.tensor_model_parallel_size") == 1
    assert s("actor_rollout_ref.actor.use_dynamic_bsz") is True
    # what archer's trainer and workers read
    assert s("archer.influence.enable") is True and s("archer.influence.max_prompts_per_step") == 16
    assert s("archer.trace.enable") is True and s("archer.run_dir") == str(Path("/runs/r1").resolve())
    assert verl_config("math", resume=True).select("trainer.resume_mode") == "auto"


def test_entropy_and_code_presets_select_archers_losses_and_rewards():
    e = verl_config("math")
    assert e.select("actor_rollout_ref.actor.policy_loss.loss_mode") == "aspo"
    assert e.select("actor_rollout_ref.actor.calculate_entropy") is True  # archer's losses need it
    assert e.select("archer.loss_knobs.high_entropy_clip_ratio_high") == 0.4
    assert e.select("archer.loss_knobs.aspo_dual_clip") == 3.0
    assert e.select("actor_rollout_ref.actor.loss_agg_mode") == "seq-mean-token-mean"
    assert e.select("algorithm.filter_groups.enable") is True
    assert verl_config("math-grpo").select("actor_rollout_ref.actor.policy_loss.loss_mode") == "vanilla"
    c = verl_config("code")
    assert c.select("reward.custom_reward_function.reward_kwargs.function") == "code"
    assert c.select("actor_rollout_ref.actor.clip_ratio_c") == 3.0
    assert c.select("reward.reward_manager.name") == "dapo"  # a truncated response scores -1, as Archer2.0's
    a = verl_config("archer-code")
    assert a.select("actor_rollout_ref.actor.policy_loss.loss_mode") == "archer"
    assert a.select("actor_rollout_ref.actor.clip_ratio_c") == 10.0
    assert a.select("archer.loss_knobs.high_entropy_clip_ratio_high") == 0.5
    assert a.select("reward.reward_manager.name") == "naive"  # no overlong buffer in ArcherCodeR's recipe


def test_verl_pass_through_existing_open_and_added_keys():
    vc = verl_config(
        "math",
        "verl.actor_rollout_ref.rollout.gpu_memory_utilization=0.55",
        "verl.actor_rollout_ref.model.override_config.rope_theta=500000",
        "+verl.actor_rollout_ref.rollout.engine_kwargs.vllm.new_knob=7",
        "verl.data.train_batch_size=64",  # a key archer maps: allowed when it says the same
    )
    assert vc.select("actor_rollout_ref.rollout.gpu_memory_utilization") == 0.55
    assert vc.select("actor_rollout_ref.model.override_config.rope_theta") == 500000  # verl leaves it open
    assert vc.select("actor_rollout_ref.rollout.engine_kwargs.vllm.new_knob") == 7
    assert vc.select("data.train_batch_size") == 64


@pytest.mark.parametrize(
    "override,suggestion",
    [
        (
            "verl.actor_rollout_ref.actor.ppo_mini_batchsize=8",
            "verl.actor_rollout_ref.actor.ppo_mini_batch_size",
        ),
        ("verl.trainer.n_gpu_per_node=4", "verl.trainer.n_gpus_per_node"),
        (
            "verl.actor_rollout_ref.rollout.engine_kwargs.vllm2.x=1",
            "verl.actor_rollout_ref.rollout.engine_kwargs.vllm",
        ),
    ],
)
def test_unknown_verl_key_is_a_config_error_with_suggestions(override, suggestion):
    with pytest.raises(ConfigError) as e:
        verl_config("math", override)
    assert e.value.exit_code == 2 and f"'{suggestion}'" in e.value.message
    assert "unknown verl key" in e.value.message and "+verl." in e.value.hint


def test_unknown_verl_key_exits_2_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(
        app, ["train", "--preset", "math-influence", *REQUIRED, "verl.trainer.nnode=2", "--out", str(out)]
    )
    assert r.exit_code == 2, r.output
    assert "unknown verl key 'verl.trainer.nnode'" in r.stderr and "'verl.trainer.nnodes'" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["warmup.enable=true"], "warms up archer's tiny model only"),
        (
            ["influence.enable=true", "verl.actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"],
            "ulysses_sequence_parallel_size=1",
        ),
        (["verl.trainer.v1.trainer_mode=archer_sync"], "must stay 'sync'"),
        (["trainer.device=cpu"], "rolls out with archer's hf backend"),
    ],
)
def test_settings_verl_cannot_honour_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        verl_config("math", *overrides)


def test_output_functions_other_than_the_training_loss_are_accepted():
    """verl captures them with one separate backward before the update (engines/verl/capture.py)."""
    cfg = verl_config("math-influence", "influence.output_function=log_prob")
    assert cfg.select("archer.influence.output_function") == "log_prob"


def test_verls_own_checks_run_before_ray(tmp_path):
    r = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "math",
            *REQUIRED,
            "verl.trainer.n_gpus_per_node=7",
            "verl.actor_rollout_ref.actor.use_dynamic_bsz=false",
            "--out",
            str(tmp_path / "run"),
            "--dry-run",
        ],
    )
    assert r.exit_code == 2, r.output
    assert "verl rejects the config" in r.stderr and "divisible" in r.stderr
    r = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "math",
            *REQUIRED,
            "verl.actor_rollout_ref.rollout.mode=sync",
            "--dry-run",
        ],
    )
    assert r.exit_code == 2 and "verl rejects the config" in r.stderr, r.output


def test_runtime_env_reaches_every_ray_process():
    from archer.core.engines.verl.config import apply_runtime_env

    vc = verl_config(
        "math", "verl.ray_kwargs.ray_init.runtime_env.env_vars={VERL_USE_EXTERNAL_MODULES: mine,FOO: x}"
    )
    apply_runtime_env(vc, Path("/runs/r1"))
    env = vc.select("ray_kwargs.ray_init.runtime_env.env_vars")
    assert env["VERL_USE_EXTERNAL_MODULES"] == "mine,archer.core.engines.verl.plugin" and env["FOO"] == "x"
    repo = str(Path(__file__).resolve().parents[2])
    assert repo in env["PYTHONPATH"].split(os.pathsep)
    assert env["TENSORBOARD_DIR"] == str(Path("/runs/r1").resolve() / "tensorboard")
    assert int(env["ARCHER_PG_TIMEOUT_SECONDS"]) > 0


@pytest.mark.parametrize("preset", VERL_PRESETS)
def test_dry_run_prints_the_plan_then_the_composed_verl_config(preset, tmp_path, inputs):
    out = tmp_path / "run"
    args = ["train", "--preset", preset, *inputs, SDPA, "--out", str(out), "--dry-run"]
    r = runner.invoke(app, [*args, "--full-config"])
    assert r.exit_code == 0, r.output
    plan, config_text = r.stdout.split("verl config (complete")
    cfg = yaml.safe_load(config_text.split("\n", 1)[1])
    assert cfg["trainer"]["v1"]["trainer_mode"] == "sync"
    assert cfg["actor_rollout_ref"]["model"]["path"] == inputs[0].split("=", 1)[1]
    assert cfg["archer"]["run_dir"] == str(out.resolve())
    assert {"algorithm", "reward", "data", "critic", "ray_kwargs", "transfer_queue"} <= set(cfg)  # complete
    for label in (
        "verl engine plan",
        "nodes",
        "GPUs per node",
        "rollout engine",
        "vllm",
        "batch",
        "responses per step",
        "output",
        str(out),
        "verl plugin",
        "registered",
    ):
        assert label in plan, label
    # without --full-config: the same plan, then only the keys this run sets
    short = runner.invoke(app, args)
    assert short.exit_code == 0, short.output
    plan2, set_text = short.stdout.split("verl config (the keys this run sets")
    assert plan2 == plan
    keys = yaml.safe_load(set_text.split("\n", 1)[1])
    assert keys["actor_rollout_ref"]["model"]["path"] == cfg["actor_rollout_ref"]["model"]["path"]
    assert keys["actor_rollout_ref"]["rollout"]["n"] == cfg["actor_rollout_ref"]["rollout"]["n"]
    assert "critic" not in keys and "transfer_queue" not in keys
    assert not out.exists()  # a dry run writes nothing


def test_dry_run_lists_what_is_still_required():
    r = runner.invoke(app, ["train", "--preset", "math-influence", "--dry-run", "--full-config"])
    assert r.exit_code == 0, r.output
    assert "model.path" in r.stderr and "data.train_files" in r.stderr
    assert "path: ???" in r.stdout.split("verl config (complete")[1]


@pytest.mark.parametrize("dry_run", [True, False])
def test_missing_model_or_data_file_exits_2_before_ray(dry_run, tmp_path, inputs):
    import ray

    flag = ["--dry-run"] if dry_run else []
    out = ["--out", str(tmp_path / "run")]
    r = runner.invoke(
        app,
        ["train", "--preset", "math", inputs[0], "data.train_files=[/no/train.parquet]", SDPA, *out, *flag],
    )
    assert r.exit_code == 2, r.output
    assert "data.train_files: /no/train.parquet does not exist" in r.stderr
    r = runner.invoke(
        app, ["train", "--preset", "math", "model.path=/no/model", inputs[1], SDPA, *out, *flag]
    )
    assert r.exit_code == 2, r.output
    assert "model.path /no/model does not exist" in r.stderr
    assert not ray.is_initialized() and not (tmp_path / "run").exists()


def test_paths_archer_will_make_are_not_required_yet():
    from archer.core.engines.verl.launch import check_inputs

    vc = verl_config("math", SDPA)  # /models/qwen and /data/train.parquet do not exist here
    with pytest.raises(ConfigError, match="does not exist"):
        check_inputs(vc)
    assert check_inputs(vc, will_make=["/models/qwen", "/data/train.parquet"]) is None


def test_fewer_prompts_than_one_batch_is_an_error_naming_the_counts(tmp_path, inputs):
    r = runner.invoke(
        app, ["train", "--preset", "math", *inputs, SDPA, "data.train_batch_size=256", "--dry-run"]
    )
    assert r.exit_code == 2, r.output
    assert "128 prompts in data.train_files, fewer than one batch (data.train_batch_size=256)" in r.stderr


def test_too_few_prompts_after_verls_length_filter_names_the_filter():
    from archer.core.engines.verl.launch import check_batch_fits

    check_batch_fits(64, 64, filtered=True, max_prompt_length=512)
    with pytest.raises(
        ConfigError,
        match="3 prompts left after dropping prompts longer than "
        r"data.max_prompt_length=512, fewer than one batch \(data.train_batch_size=64\)",
    ):
        check_batch_fits(3, 64, filtered=True, max_prompt_length=512)


def test_flash_attention_without_flash_attn_exits_2_naming_both_fixes(tmp_path, inputs):
    import importlib.util

    import ray

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here: this checks the refusal on machines without it")
    out = ["--out", str(tmp_path / "run")]
    for flag in (["--dry-run"], []):
        r = runner.invoke(app, ["train", "--preset", "math-influence", *inputs, *out, *flag])
        assert r.exit_code == 2, r.output
        assert "model.attn_implementation=flash_attention_2 needs the flash-attn package" in r.stderr
        assert "flash-attn build that matches your torch and CUDA" in r.stderr
        assert "model.attn_implementation=sdpa" in r.stderr
    assert not ray.is_initialized() and not (tmp_path / "run").exists()


def test_sdpa_turns_remove_padding_off_and_the_plan_says_so(tmp_path, inputs):
    vc = verl_config("math", SDPA)
    assert vc.select("actor_rollout_ref.model.use_remove_padding") is False
    assert verl_config("math").select("actor_rollout_ref.model.use_remove_padding") is True  # flash-attn
    r = runner.invoke(app, ["train", "--preset", "math", *inputs, SDPA, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "remove-padding off; remove-padding turned off: attn_implementation=sdpa" in " ".join(
        r.stdout.split()
    )
    with pytest.raises(ConfigError, match="packs sequences into one row"):
        verl_config("math", SDPA, "verl.actor_rollout_ref.model.use_remove_padding=true")


@pytest.mark.parametrize(
    "override",
    [
        "verl.actor_rollout_ref.model.enable_activation_offload=true",
        "verl.actor_rollout_ref.model.tiled_mlp.enabled=true",
    ],
)
def test_influence_refuses_activation_offload_and_tiled_mlp(override, tmp_path, inputs):
    verl_config("math", override)  # without influence: verl's feature, untouched
    with pytest.raises(ConfigError, match="capture hooks never fire"):
        verl_config("math-influence", override)
    r = runner.invoke(app, ["train", "--preset", "math-influence", *inputs, SDPA, override, "--dry-run"])
    assert r.exit_code == 2 and "influence capture does not work with" in r.stderr, r.output


def test_a_verl_key_archer_maps_cannot_be_set_twice(tmp_path, inputs):
    with pytest.raises(ConfigError) as e:
        verl_config("math", "rollout.n=16", "verl.actor_rollout_ref.rollout.n=4")
    assert "'verl.actor_rollout_ref.rollout.n=4'" in e.value.message and "'rollout.n=16'" in e.value.message
    with pytest.raises(ConfigError, match="'rollout.max_new_tokens=20000'"):
        verl_config("math", "rollout.max_new_tokens=20000", "verl.data.max_response_length=4096")
    vc = verl_config("math", "rollout.n=16", "verl.actor_rollout_ref.rollout.n=16")  # the same value: fine
    assert vc.select("actor_rollout_ref.rollout.n") == 16
    out = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "math",
            *inputs,
            SDPA,
            "rollout.n=16",
            "verl.actor_rollout_ref.rollout.n=4",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 2 and "conflicts with 'rollout.n=16'" in r.stderr, r.output
    assert not out.exists()


def test_train_refuses_to_start_ray_without_a_rollout_engine(tmp_path, inputs):
    import importlib.util

    import ray

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: this checks the refusal on machines without it")
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--preset", "math-influence", *inputs, SDPA, "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert "rolls out with vllm, which is not installed here" in r.stderr
    assert not ray.is_initialized() and not out.exists()


@pytest.mark.parametrize("preset,extra", [("arpo", []), ("aepo", [])])
def test_the_agent_presets_run_their_agent_loop_on_vllm_and_only_lack_vllm_here(
    preset, extra, tmp_path, inputs
):
    """agent.enable on verl rolls out with vLLM (archer's top-k entropy server, rollout_vllm.py) or
    the hf replica: the dry run has nothing against the presets' vLLM backend, and training here
    stops before Ray only because vLLM is not installed."""
    import importlib.util

    import ray

    out = tmp_path / "run"
    args = ["train", "--preset", preset, *inputs, SDPA, *extra, "--out", str(out)]
    r = runner.invoke(app, [*args, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "backend" not in r.stderr and "agent.enable" not in r.stderr, r.stderr
    if importlib.util.find_spec("vllm") is not None:
        return
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "rolls out with vllm, which is not installed here" in r.stderr
    assert not ray.is_initialized() and not out.exists()


def test_agent_rollouts_on_verl_refuse_servers_without_entropies(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(
        app, ["train", "--preset", "arpo", *REQUIRED, "rollout.backend=sglang", "--out", str(out)]
    )
    assert r.exit_code == 2, r.output
    assert "not sglang" in r.stderr and "rollout.backend=vllm" in r.stderr and "engine=local" in r.stderr
    assert not out.exists()


def test_the_full_entropy_is_refused_on_verl_where_servers_return_top_k(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(
        app, ["train", "--preset", "arpo", *REQUIRED, "agent.entropy_topk=0", "--out", str(out)]
    )
    assert r.exit_code == 2, r.output
    assert "agent.entropy_topk=0" in r.stderr and "agent.entropy_topk=10" in r.stderr and not out.exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("verl.actor_rollout_ref.rollout.disaggregation.enabled=true", "disaggregation"),
        ("verl.actor_rollout_ref.rollout.logprobs_mode=processed_logits", "logprobs_mode=processed_logits"),
    ],
)
def test_what_bypasses_the_vllm_entropy_server_is_refused_for_agent_rollouts(override, message):
    with pytest.raises(ConfigError, match=message):
        verl_config("arpo", override)
    verl_config(
        "math", override.replace("processed_logits", "raw_logprobs")
    )  # without agent: verl's business


def test_vllm_is_allowed_the_top_k_log_probs_the_agent_loop_asks_for():
    key = "actor_rollout_ref.rollout.engine_kwargs.vllm.max_logprobs"
    assert verl_config("arpo").select("archer.agent.entropy_topk") == 10
    assert verl_config("arpo").select(key) is None  # vLLM's default 20 covers it
    assert verl_config("arpo", "agent.entropy_topk=32").select(key) == 32
    assert verl_config("arpo", "agent.entropy_topk=32", "rollout.backend=hf").select(key) is None


def test_aepo_lock_step_counting_and_dynamic_rollouts_are_accepted_on_verl(tmp_path, inputs):
    """AEPO's lock-step counter and dynamic rollouts run in archer's verl agent loop
    (group.Lockstep, group.GroupRollout._dynamic_phase): the check that refused them says nothing."""
    out = tmp_path / "run"
    args = [
        "train",
        "--preset",
        "aepo",
        *inputs,
        SDPA,
        "rollout.backend=hf",
        "agent.aepo.dynamic_rollouts=true",
        "--out",
        str(out),
        "--dry-run",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "agent.enable on verl" not in r.stderr and "consecutive_count" not in r.stderr, r.stderr


def test_agent_enable_installs_archers_agent_loop_manager_and_its_settings():
    vc = verl_config("arpo-verl-smoke", "warmup.enable=false")
    assert (
        vc.select("actor_rollout_ref.rollout.agent.agent_loop_manager_class")
        == "archer.core.engines.verl.agent_loop.ArcherAgentLoopManager"
    )
    agent = vc.select("archer.agent")
    assert agent.initial_rollouts == 1 and agent.refill == "one"
    assert agent.algorithm == "arpo" and agent.cache_dir
    assert vc.select("reward.custom_reward_function.reward_kwargs.agent_answer") is True
    plain = verl_config("quickstart-verl", "warmup.enable=false")
    assert plain.select("actor_rollout_ref.rollout.agent.agent_loop_manager_class") is None
    assert plain.select("archer.agent") is None


def test_aepo_preset_selects_archers_aepo_loss_with_its_knob():
    vc = verl_config("aepo")
    assert vc.select("actor_rollout_ref.actor.policy_loss.loss_mode") == "aepo"
    assert vc.select("actor_rollout_ref.actor.calculate_entropy") is True
    assert (
        vc.select("archer.loss_knobs.aepo_entropy_advantage")
        == compose("aepo", REQUIRED).cfg.actor.aepo_entropy_advantage
    )


def test_vllm_loads_the_tokenizer_archer_gives_verl():
    """vLLM's server loads a tokenizer of its own, from the model folder unless told; the tiny model's
    verl tokenizer lives in <model>/tokenizer, not in the model folder."""
    tok = "model.tokenizer_path=/models/qwen-tok"
    vc = verl_config("math", tok, "rollout.backend=vllm")
    assert vc.select("actor_rollout_ref.rollout.engine_kwargs.vllm.tokenizer") == "/models/qwen-tok"
    assert vc.select("actor_rollout_ref.model.tokenizer_path") == "/models/qwen-tok"
    assert not verl_config("math", tok, "rollout.backend=hf").select(
        "actor_rollout_ref.rollout.engine_kwargs.vllm.tokenizer"
    )
    assert not verl_config("math", "rollout.backend=vllm").select(
        "actor_rollout_ref.rollout.engine_kwargs.vllm.tokenizer"
    )


def test_a_rollout_wider_than_the_gpus_is_a_config_error_before_ray():
    """verl asserts it inside its workers after Ray started and the model was built (seen on one
    H100: verl's default rollout tensor_model_parallel_size=2 with one GPU)."""
    tp = "verl.actor_rollout_ref.rollout.tensor_model_parallel_size"
    with pytest.raises(ConfigError) as e:
        verl_config("math", "verl.trainer.n_gpus_per_node=1", f"{tp}=2")
    assert "needs 2 GPUs per replica (tensor_model_parallel_size=2) but the run has 1" in e.value.message
    assert f"{tp}=1" in e.value.hint
    with pytest.raises(ConfigError, match="which it must divide"):
        verl_config("math", "verl.trainer.n_gpus_per_node=3", f"{tp}=2")
    assert (
        verl_config("math", "verl.trainer.n_gpus_per_node=1", f"{tp}=1").select(tp.removeprefix("verl.")) == 1
    )
    assert verl_config("math", "verl.trainer.n_gpus_per_node=4", "verl.trainer.nnodes=2", f"{tp}=8")
