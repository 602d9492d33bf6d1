"""archer's config -> verl's, composed with the Hydra compose API from verl's own
`trainer/config/ppo_trainer.yaml`, and checked before Ray starts.

Order: verl's defaults -> archer's engine defaults (ENGINE_DEFAULTS) -> archer's keys mapped onto
verl's (`mapped_values`, the table in docs/verl.md) -> the preset's and command line's `verl.*`
pass-through keys (last, so they win; one that contradicts a mapped archer key is an error).
Every pass-through key must exist in verl's config; a new
key is accepted only under a mapping verl leaves empty or passes on as keyword arguments
(FREE_FORM: Ray's `ray_init`, vLLM's `engine_kwargs`, `override_config`, ...) or when written
`+verl.KEY=VALUE` on the command line. Anything else is a `ConfigError` (exit 2) that suggests
the nearest verl keys. `check_with_verl` then runs verl's own `validate_config` and builds the
config dataclasses verl's workers will build, so type and range errors show up here too.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.errors import ConfigError

REWARD_MODULE = "pkg://archer.core.rewards.verl_reward"
REWARD_FUNCTION = "compute_score"
ARCHER_TRAINER = "archer_sync"  # archer's trainer class (registered in verl under this name)
VERL_TRAINER_MODE = "sync"  # the mode verl's code paths see: archer's trainer is verl's sync trainer
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
MIXED_PRECISION = {
    "fp32": {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
    "fp16": {"param_dtype": "fp16", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
}

# What archer sets in verl whatever the preset says (a preset's or the command line's verl.* wins;
# use_remove_padding is then turned off unless the attention is flash-attn's: _attention_layout).
ENGINE_DEFAULTS: dict[str, Any] = {
    "trainer.use_v1": True,
    "trainer.v1.trainer_mode": VERL_TRAINER_MODE,
    "trainer.nnodes": 1,
    "trainer.n_gpus_per_node": 8,
    "trainer.total_epochs": 1_000_000,  # trainer.total_training_steps decides when to stop
    "actor_rollout_ref.model.use_remove_padding": True,
    "data.filter_overlong_prompts": True,
}

# verl on CPUs (trainer.device=cpu; archer's CPU platform, cpu_platform.py): one gloo rank, FSDP2,
# archer's hf rollout in the worker, and Ray/TransferQueue sized to start on a 2-core machine
# (TransferQueue's default 8 storage units and verl's 8 agent-loop and 8 reward workers each take a
# Ray CPU; logical CPUs may exceed cores). A preset's or the command line's verl.* still wins.
CPU_DEFAULTS: dict[str, Any] = {
    "trainer.device": "cpu",
    "trainer.nnodes": 1,
    "trainer.n_gpus_per_node": 1,
    "actor_rollout_ref.actor.strategy": "fsdp2",
    "actor_rollout_ref.ref.strategy": "fsdp2",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": 1,
    "ray_kwargs.ray_init.num_cpus": 8,
    "actor_rollout_ref.rollout.agent.num_workers": 1,
    "reward.num_workers": 1,
    "data.dataloader_num_workers": 0,
}

# archer's hf rollout: one replica per worker rank, its weights resident between steps.
HF_ROLLOUT_DEFAULTS: dict[str, Any] = {
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
    "actor_rollout_ref.rollout.free_cache_engine": False,
    "actor_rollout_ref.rollout.load_format": "auto",
}

# agent.enable: archer's agent-loop manager (agent_loop.py, named here so composing imports nothing)
AGENT_LOOP_MANAGER = "archer.core.engines.verl.agent_loop.ArcherAgentLoopManager"
VLLM_MAX_LOGPROBS = 20  # vLLM's default ModelConfig.max_logprobs (the most log-probs a request gets)

# Keys archer's mapping adds although verl's yaml does not declare them.
ADDED_KEYS = (
    "actor_rollout_ref.rollout.agent.agent_loop_manager_class",
    "actor_rollout_ref.actor.fsdp_config.mixed_precision",
    "reward.custom_reward_function.reward_kwargs",
    "reward.reward_kwargs",
    "archer",
)


# verl mappings passed on as keyword arguments (Ray's, vLLM's, ...): any key below them is accepted.
FREE_FORM = (
    "ray_kwargs.ray_init",
    "ray_kwargs.ray_init.runtime_env",
    "actor_rollout_ref.rollout.engine_kwargs.vllm",
    "actor_rollout_ref.rollout.engine_kwargs.sglang",
    "actor_rollout_ref.rollout.engine_kwargs.trtllm",
    "actor_rollout_ref.model.override_config",
    "data.apply_chat_template_kwargs",
    "data.mm_processor_kwargs",
)


def verl_config_dir() -> Path:
    """verl's `trainer/config` folder, found without importing verl (which takes seconds)."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "engine: verl needs the verl package", hint="pip install -e '.[verl]' (verl==0.9.1)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "trainer" / "config"


def base_config() -> Any:
    """verl's `ppo_trainer` config, composed by Hydra exactly as `python -m verl.trainer.main_ppo`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
            return compose("ppo_trainer")
    finally:
        GlobalHydra.instance().clear()


def _no_verl_for(cfg: Any, run_dir: Path) -> None:
    """archer settings the verl engine cannot honour: refuse them instead of ignoring them.
    (A required value still `???` is left to `Composed.require_complete`.)"""
    from archer.core.engines.verl.inputs import check_supported

    # an empty data.train_files (the synthetic task) and model.path null (the tiny model) are
    # written for verl before the run starts (inputs.py)
    check_supported(cfg, run_dir)
    if cfg.data.answer_key != "reward_model.ground_truth":
        raise ConfigError(
            f"engine: verl reads the answer from reward_model.ground_truth, not {cfg.data.answer_key!r}",
            hint="write the data in verl's layout with 'archer data prepare'",
        )
    if not cfg.data.apply_chat_template:
        raise ConfigError(
            "engine: verl always renders prompts with the chat template (data.apply_chat_template=false)"
        )
    if cfg.trainer.device == "cpu" and cfg.rollout.backend != "hf":
        raise ConfigError(
            f"engine: verl on CPUs rolls out with archer's hf backend, not {cfg.rollout.backend}",
            hint="add rollout.backend=hf",
        )


def _steps_or_end(every: int, total: int) -> int:
    return every if every > 0 else total


def mapped_values(cfg: Any, run_dir: Path, *, resume: bool, preset: str = "") -> dict[str, Any]:
    """archer's keys as verl keys (the mapping table of docs/verl.md, in code)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    m, d, r, a, t, alg = c["model"], c["data"], c["rollout"], c["actor"], c["trainer"], c["algorithm"]
    arr, act = "actor_rollout_ref", "actor_rollout_ref.actor"
    total = int(t["total_steps"])
    has_val = bool(d["val_files"])
    from archer.core.algorithms import loss_needs_entropy

    entropy_loss = loss_needs_entropy(a["policy_loss"])
    logger = (
        ["console"]
        + (["tensorboard"] if t["logging"]["tensorboard"] else [])
        + (["wandb"] if t["logging"]["wandb"] else [])
    )
    out: dict[str, Any] = {
        # model
        f"{arr}.model.path": m["path"],
        f"{arr}.model.override_config.attn_implementation": m["attn_implementation"],
        f"{arr}.model.enable_gradient_checkpointing": m["gradient_checkpointing"],
        f"{arr}.model.trust_remote_code": m["trust_remote_code"],
        "data.trust_remote_code": m["trust_remote_code"],
        f"{arr}.rollout.dtype": DTYPES[m["dtype"]],
        f"{arr}.rollout.name": r["backend"],
        # data
        "data.train_files": d["train_files"],
        "data.val_files": d["val_files"] if has_val else d["train_files"],
        "data.prompt_key": d["prompt_key"],
        "data.max_prompt_length": d["max_prompt_length"],
        "data.max_response_length": r["max_new_tokens"],
        "data.train_batch_size": d["train_batch_size"],
        "data.shuffle": d["shuffle"],
        "data.seed": c["seed"],
        # without val_files verl still builds a validation set; from 1 train prompt, never used
        "data.val_max_samples": (r["val"]["max_prompts"] if r["val"]["max_prompts"] > 0 else -1)
        if has_val
        else 1,
        # rollout
        f"{arr}.rollout.n": r["n"],
        f"{arr}.rollout.temperature": r["temperature"],
        f"{arr}.rollout.top_p": r["top_p"],
        f"{arr}.rollout.top_k": r["top_k"] if r["top_k"] > 0 else -1,
        f"{arr}.rollout.seed": c["seed"],
        f"{arr}.rollout.val_kwargs.n": r["val"]["n"],
        f"{arr}.rollout.val_kwargs.temperature": r["val"]["temperature"],
        f"{arr}.rollout.val_kwargs.top_p": r["val"]["top_p"],
        f"{arr}.rollout.val_kwargs.do_sample": r["val"]["temperature"] > 0,
        f"{arr}.rollout.log_prob_micro_batch_size_per_gpu": a["ppo_micro_batch_size"],
        f"{arr}.ref.log_prob_micro_batch_size_per_gpu": a["ppo_micro_batch_size"],
        # algorithm
        "algorithm.adv_estimator": "archer_" + alg["adv_estimator"],
        "algorithm.norm_adv_by_std_in_grpo": alg["norm_adv_by_std_in_grpo"],
        "algorithm.filter_groups.enable": alg["filter_groups"]["enable"],
        "algorithm.filter_groups.metric": alg["filter_groups"]["metric"],
        "algorithm.filter_groups.max_num_gen_batches": alg["filter_groups"]["max_num_gen_batches"],
        # actor
        f"{act}.policy_loss.loss_mode": a["policy_loss"],
        f"{act}.clip_ratio_low": a["clip_ratio_low"],
        f"{act}.clip_ratio_high": a["clip_ratio_high"],
        f"{act}.clip_ratio_c": a["clip_ratio_c"],
        f"{act}.loss_agg_mode": a["loss_agg_mode"],
        f"{act}.ppo_epochs": a["ppo_epochs"],
        f"{act}.ppo_mini_batch_size": a["ppo_mini_batch_size"],
        f"{act}.ppo_micro_batch_size_per_gpu": a["ppo_micro_batch_size"],
        f"{act}.use_kl_loss": a["use_kl_loss"],
        f"{act}.kl_loss_coef": a["kl_loss_coef"],
        f"{act}.kl_loss_type": a["kl_loss_type"],
        f"{act}.entropy_coeff": a["entropy_coeff"],
        f"{act}.calculate_entropy": entropy_loss,
        f"{act}.data_loader_seed": c["seed"],
        f"{act}.optim.lr": a["optim"]["lr"],
        f"{act}.optim.lr_warmup_steps": a["optim"]["warmup_steps"],
        f"{act}.optim.lr_scheduler_type": a["optim"]["schedule"],
        f"{act}.optim.weight_decay": a["optim"]["weight_decay"],
        f"{act}.optim.betas": a["optim"]["betas"],
        f"{act}.optim.clip_grad": a["optim"]["grad_clip"] if a["optim"]["grad_clip"] > 0 else 1e9,
        f"{act}.grad_clip": a["optim"]["grad_clip"] if a["optim"]["grad_clip"] > 0 else 1e9,
        # reward
        "reward.custom_reward_function.path": REWARD_MODULE,
        "reward.custom_reward_function.name": REWARD_FUNCTION,
        "reward.custom_reward_function.reward_kwargs": {
            "function": c["reward"]["function"],
            "timeout_s": c["reward"]["timeout_s"],
            "format_reward": c["reward"]["format_reward"],
        },
        # trainer
        "trainer.total_training_steps": total,
        "trainer.test_freq": _steps_or_end(int(t["val_every"]), total) if has_val else -1,
        "trainer.val_before_train": bool(t["val_before_train"]) and has_val,
        "trainer.save_freq": _steps_or_end(int(t["save_every"]), total),
        "trainer.max_actor_ckpt_to_keep": t["keep_checkpoints"] if t["keep_checkpoints"] > 0 else None,
        "trainer.default_local_dir": str(Path(run_dir).resolve() / "checkpoints"),
        "trainer.resume_mode": "auto" if resume else "disable",
        "trainer.project_name": t["logging"]["wandb_project"],
        # verl logs sample generations at each validation (a W&B table, tensorboard text)
        "trainer.log_val_generations": t["logging"]["samples"] if t["logging"]["samples_every"] > 0 else 0,
        "trainer.experiment_name": Path(run_dir).name,
        "trainer.logger": logger,
        # what archer's trainer and workers read (see trainer.archer_section)
        "archer": {
            "run_dir": str(Path(run_dir).resolve()),
            "preset": preset,
            "trace": c["trace"],
            "influence": c["influence"],
            "logging": t["logging"],  # histograms of the traced steps (archer's trainer)
            "loss_knobs": {
                "aspo_dual_clip": a["aspo_dual_clip"],
                "aepo_entropy_advantage": a["aepo_entropy_advantage"],
                **a["archer"],
            },
        },
    }
    if r["backend"] == "hf":
        out.update(HF_ROLLOUT_DEFAULTS)
    if c["agent"]["enable"]:  # multi-turn tool rollouts with branching: archer's agent loop
        out[f"{arr}.rollout.agent.agent_loop_manager_class"] = AGENT_LOOP_MANAGER
        cache_dir = t["cache_dir"] or str(Path(t["out_dir"]) / ".cache")
        out["archer"]["agent"] = {**c["agent"], "cache_dir": str(Path(cache_dir).resolve())}
        out["reward.custom_reward_function.reward_kwargs"]["agent_answer"] = True
        topk = int(c["agent"]["entropy_topk"])
        if r["backend"] == "vllm" and topk > VLLM_MAX_LOGPROBS:  # rollout_vllm asks vLLM for k log-probs
            out[f"{arr}.rollout.engine_kwargs.vllm.max_logprobs"] = topk
    if m["dtype"] in MIXED_PRECISION:
        out[f"{act}.fsdp_config.mixed_precision"] = MIXED_PRECISION[m["dtype"]]
    if m["tokenizer_path"]:
        out[f"{arr}.model.tokenizer_path"] = m["tokenizer_path"]
        if r["backend"] == "vllm":  # vLLM's server loads its own tokenizer from the model folder otherwise
            out[f"{arr}.rollout.engine_kwargs.vllm.tokenizer"] = m["tokenizer_path"]
    ob = alg["overlong_buffer"]
    if ob["enable"]:
        out["reward.reward_manager.name"] = "dapo"
        out["reward.reward_kwargs"] = {
            "overlong_buffer_cfg": {
                "enable": True,
                "len": ob["len"],
                "penalty_factor": ob["penalty_factor"],
                "log": True,
            },
            "max_resp_len": r["max_new_tokens"],
        }
    return out


# ----------------------------------------------------------------------------- applying keys
def _node_path(cfg: Any, key: str) -> tuple[Any, str] | None:
    """(parent node, leaf name) when every parent of `key` exists, else None."""
    from omegaconf import DictConfig

    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node, DictConfig) or p not in list(node.keys()):
            return None
        node = node._get_node(p)
    return (node, parts[-1]) if isinstance(node, DictConfig) else None


def _exists(cfg: Any, key: str) -> bool:
    found = _node_path(cfg, key)
    return found is not None and found[1] in list(found[0].keys())  # `in` is False for ??? values


def _open_parent(defaults: Any, key: str) -> bool:
    """The deepest existing parent of `key` in verl's defaults is a mapping whose keys are the
    user's to choose: one verl leaves empty, or one that is passed on as keyword arguments."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:depth])
        found = _node_path(defaults, parent)
        if found is None or found[1] not in list(found[0].keys()):
            continue
        node = found[0]._get_node(found[1])
        return parent in FREE_FORM or (hasattr(node, "keys") and len(node) == 0 and "_target_" not in node)
    return False


def _set(cfg: Any, key: str, value: Any) -> None:
    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for k in cfg.keys():
        node = cfg._get_node(k)
        key = f"{prefix}{k}"
        keys.append(key)
        if isinstance(node, DictConfig):
            keys.extend(all_keys(node, key + "."))
    return keys


def _unknown_verl_key(key: str, source: str, cfg: Any) -> ConfigError:
    from archer.core.config.compose import suggest_keys

    picks = suggest_keys(key, keys=all_keys(cfg))
    msg = f"unknown verl key 'verl.{key}' ({source})"
    if picks:
        msg += ". Did you mean " + ", ".join(f"'verl.{p}'" for p in picks) + "?"
    return ConfigError(
        msg,
        hint="verl.* keys must exist in verl's trainer config; add a new one with "
        "+verl.KEY=VALUE on the command line",
    )


def pass_through(composed: Any) -> list[tuple[str, Any, str, bool]]:
    """(verl key, value, source, may add) for every verl.* setting: the preset's `verl:` mapping
    and the command line, where `+verl.KEY=VALUE` may add a key verl does not declare."""
    from omegaconf import OmegaConf

    from archer.core.collect.runs import flatten  # dotted leaves; an empty mapping stays a leaf
    from archer.core.config.compose import parse_override

    section = OmegaConf.to_container(composed.cfg.verl, resolve=True) if "verl" in composed.cfg else {}
    added = {
        parse_override(o)[1][len("verl.") :]
        for o in composed.overrides
        if o.strip().startswith("+verl.") and "=" in o
    }
    cli = {
        parse_override(o)[1][len("verl.") :]
        for o in composed.overrides
        if o.strip().lstrip("+").startswith("verl.") and "=" in o
    }
    source = f"preset {composed.preset_path}" if composed.preset_path else "config"
    out = []
    for key, value in flatten(section or {}).items():
        where = f"override 'verl.{key}'" if key in cli else source
        out.append((key, value, where, key in added))
    return out


# ----------------------------------------------------------------------------- public
@dataclass
class VerlConfig:
    """The composed verl config and what it was made of."""

    cfg: Any  # omegaconf.DictConfig, interpolations unresolved (as verl's main does)
    mapped: dict[str, Any]
    overrides: list[tuple[str, Any, str, bool]]
    notes: list[str] = field(default_factory=list)  # what archer decided for the user (the plan shows it)
    tracker_notes: list[str] = field(default_factory=list)  # how trainer.logger was put together

    def to_yaml(self) -> str:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(self.cfg, resolve=True)

    def select(self, key: str, default: Any = None) -> Any:
        from omegaconf import OmegaConf

        return OmegaConf.select(self.cfg, key, default=default)


def compose_verl(composed: Any, run_dir: Path, *, resume: bool = False) -> VerlConfig:
    """archer's composed config -> verl's (defaults, archer's mapping, verl.* pass-through)."""
    cfg = composed.cfg
    _no_verl_for(cfg, run_dir)
    mapped = mapped_values(cfg, run_dir, resume=resume, preset=composed.preset)
    verl_cfg = base_config()
    defaults = copy.deepcopy(verl_cfg)  # which mappings verl leaves open is decided on its own defaults
    for key, value in {**ENGINE_DEFAULTS, **mapped}.items():
        if not (_exists(verl_cfg, key) or _open_parent(defaults, key) or key in ADDED_KEYS):
            raise RuntimeError(f"archer's verl mapping names {key!r}, which verl's config does not have")
        _set(verl_cfg, key, value)
    overrides = pass_through(composed)
    logger_note = _merge_loggers(mapped, overrides)
    _refuse_double_settings(mapped, overrides, composed, run_dir)
    for key, value, source, may_add in overrides:
        if not (_exists(verl_cfg, key) or _open_parent(defaults, key) or may_add):
            raise _unknown_verl_key(key, source, verl_cfg)
        _set(verl_cfg, key, value)
    if cfg.trainer.device == "cpu":  # a preset's verl: block sizes a GPU node; the command line still wins
        from_cli = {key for key, _, source, _ in overrides if source.startswith("override")}
        for key, value in CPU_DEFAULTS.items():
            if key not in from_cli:
                _set(verl_cfg, key, value)
    notes = _attention_layout(verl_cfg, {k for k, *_ in overrides})
    _cross_checks(verl_cfg)
    return VerlConfig(
        cfg=verl_cfg, mapped=mapped, overrides=overrides, notes=notes, tracker_notes=logger_note
    )


def archer_key_of(verl_key: str, composed: Any, run_dir: Path) -> str | None:
    """The archer key that `mapped_values` writes onto `verl_key`, found by changing archer's
    leaves one at a time (same leaf name first) and watching the verl value; None for a value
    archer computes from no single key."""
    from omegaconf import OmegaConf

    from archer.core.collect.runs import flatten

    base = OmegaConf.to_container(composed.cfg, resolve=True, throw_on_missing=False)
    leaves = {k: v for k, v in flatten(base).items() if not k.startswith("verl.")}
    leaf = verl_key.rsplit(".", 1)[-1]
    ordered = sorted(leaves, key=lambda k: k.rsplit(".", 1)[-1] != leaf)

    def value_with(key: str, value: Any) -> Any:
        cfg = copy.deepcopy(base)
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
        try:
            out = mapped_values(OmegaConf.create(cfg), run_dir, resume=False)
        except Exception:  # noqa: BLE001 - a perturbed value the mapping cannot take says nothing
            return None
        return flatten({k: v for k, v in out.items() if k != "archer"}).get(verl_key)

    before = flatten({k: v for k, v in mapped_values(composed.cfg, run_dir, resume=False).items()}).get(
        verl_key
    )
    for key in ordered:
        old = leaves[key]
        if isinstance(old, bool):
            new: Any = not old
        elif isinstance(old, (int, float)):
            new = old + 7
        elif isinstance(old, str):
            new = old + "_"
        else:
            continue
        after = value_with(key, new)
        if after is not None and after != before:
            return key
    return None


def _merge_loggers(mapped: dict[str, Any], overrides: list) -> list[str]:
    """`verl.trainer.logger=[...]` (verl's other trackers: mlflow, swanlab, clearml, ...) and
    `trainer.logging.tensorboard/wandb` both name trackers: verl gets the union (the verl list
    first), never one silently dropping the other. Returns the note saying so."""
    for i, (key, value, source, may_add) in enumerate(overrides):
        if key != "trainer.logger":
            continue
        given = [value] if isinstance(value, str) else list(value or [])
        added = [b for b in mapped["trainer.logger"] if b not in given]
        merged = given + added
        mapped["trainer.logger"] = merged
        overrides[i] = (key, merged, source, may_add)
        added_sinks = [b for b in added if b != "console"]
        if not added_sinks:
            return []
        return [f"verl.trainer.logger [{', '.join(given)}] + {', '.join(added_sinks)} from trainer.logging.*"]
    return []


def _refuse_double_settings(mapped: dict[str, Any], overrides: list, composed: Any, run_dir: Path) -> None:
    """One key, one value: a `verl.*` setting of a verl key that archer's own config maps is an
    error naming both keys, unless both say the same."""
    from archer.core.collect.runs import flatten

    archer_owned = flatten({k: v for k, v in mapped.items() if k != "archer"})
    for key, value, source, _ in overrides:
        if key not in archer_owned or archer_owned[key] == value:
            continue
        ours = archer_key_of(key, composed, run_dir)
        if ours is None:
            continue  # a value archer computes (e.g. run paths): verl.* may set it
        raise ConfigError(
            f"'verl.{key}={value}' ({source}) conflicts with '{ours}={archer_owned[key]}', which archer "
            f"maps onto the same verl key",
            hint=f"set {ours} instead (one key, one value); docs/verl.md lists the mapping",
        )


REMOVE_PADDING = "actor_rollout_ref.model.use_remove_padding"
ATTENTION = "actor_rollout_ref.model.override_config.attn_implementation"


def uses_flash_attention(cfg: Any) -> bool:
    from omegaconf import OmegaConf

    return str(OmegaConf.select(cfg, ATTENTION) or "").startswith("flash_attention")


def _attention_layout(cfg: Any, overridden: set[str]) -> list[str]:
    """verl's remove-padding packs a micro-batch's sequences into one row, which only flash-attn
    keeps apart (verl patches its varlen kernel in): with sdpa or eager archer turns it off, and
    refuses a `verl.*` setting that turns it on."""
    from omegaconf import OmegaConf

    if uses_flash_attention(cfg) or not OmegaConf.select(cfg, REMOVE_PADDING):
        return []
    attn = OmegaConf.select(cfg, ATTENTION)
    if REMOVE_PADDING in overridden:
        raise ConfigError(
            f"verl.{REMOVE_PADDING}=true packs sequences into one row, which attn_implementation={attn} "
            "attends across",
            hint="model.attn_implementation=flash_attention_2 (flash-attn installed), or drop the override",
        )
    _set(cfg, REMOVE_PADDING, False)
    return [
        f"remove-padding turned off: attn_implementation={attn} would attend across the sequences it packs "
        "(model.attn_implementation=flash_attention_2 packs them, with flash-attn installed)"
    ]


def _cross_checks(cfg: Any) -> None:
    from omegaconf import OmegaConf

    sel = lambda k: OmegaConf.select(cfg, k)  # noqa: E731
    influence = bool(sel("archer.influence.enable"))
    if influence and int(sel("actor_rollout_ref.actor.ulysses_sequence_parallel_size") or 1) > 1:
        raise ConfigError(
            "influence capture needs actor_rollout_ref.actor.ulysses_sequence_parallel_size=1",
            hint="sequence parallelism slices each packed sequence across ranks",
        )
    if influence:
        for key, what in (
            ("actor_rollout_ref.model.enable_activation_offload", "activation offload"),
            ("actor_rollout_ref.model.tiled_mlp.enabled", "tiled MLP"),
        ):
            if sel(key):
                raise ConfigError(
                    f"influence capture does not work with {what} (verl.{key}=true): it runs the forward "
                    "without gradients and recomputes it inside the backward, where the capture hooks "
                    "never fire",
                    hint=f"set verl.{key}=false, or influence.enable=false",
                )
    _rollout_fits_the_gpus(sel)
    _agent_rollout_has_entropies(sel)
    if sel("archer.trace.enable") and sel("algorithm.rollout_correction.bypass_mode"):
        raise ConfigError(
            "the trace needs the entropy of the old-log-prob pass, which "
            "algorithm.rollout_correction.bypass_mode=true skips",
            hint="set trace.enable=false",
        )
    from archer.core.engines.verl.losses import archer_losses

    if sel("actor_rollout_ref.actor.policy_loss.loss_mode") in archer_losses() and sel(
        "actor_rollout_ref.actor.loss_agg_mode"
    ) not in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"):
        raise ConfigError(
            "archer's policy losses support loss_agg_mode token-mean, seq-mean-token-sum, seq-mean-token-mean"
        )
    if sel("trainer.v1.trainer_mode") != VERL_TRAINER_MODE:
        raise ConfigError(
            f"trainer.v1.trainer_mode must stay {VERL_TRAINER_MODE!r} under archer: archer's trainer "
            f"({ARCHER_TRAINER}, where traces, influence and archer's losses live) is verl's synchronous "
            "trainer; verl's async modes (replay buffer, partial rollouts) are not supported"
        )


def _agent_rollout_has_entropies(sel: Any) -> None:
    """archer's agent loop on vLLM reads top-k entropies from archer's vLLM server
    (rollout_vllm.py), which needs log-probs and an undivided replica."""
    key = "actor_rollout_ref.rollout"
    if sel("archer.agent") is None or sel(f"{key}.name") != "vllm":
        return
    if sel(f"{key}.disaggregation.enabled"):
        raise ConfigError(
            "agent.enable with vLLM needs archer's top-k entropy server, which prefill/decode "
            "disaggregation bypasses",
            hint=f"drop verl.{key}.disaggregation.enabled",
        )
    mode = str(sel(f"{key}.logprobs_mode") or "processed_logprobs")
    if not mode.endswith("_logprobs"):
        raise ConfigError(
            f"agent.enable with vLLM computes entropies from log-probs, not {key}.logprobs_mode={mode}",
            hint=f"set verl.{key}.logprobs_mode=processed_logprobs (verl's default)",
        )


def _rollout_fits_the_gpus(sel: Any) -> None:
    """verl asserts inside its workers, after Ray and the model build, that the rollout's
    tensor x data x pipeline parallel size divides the GPUs; say it before anything starts
    (issue 15: verl's default tensor_model_parallel_size=2 on one GPU)."""
    if sel("trainer.device") == "cpu":
        return  # archer's CPU platform: one rank, the hf rollout
    gpus = int(sel("trainer.n_gpus_per_node") or 1) * int(sel("trainer.nnodes") or 1)
    key = "actor_rollout_ref.rollout"
    sizes = {
        k: int(sel(f"{key}.{k}") or 1)
        for k in ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size")
    }
    per_replica = sizes["tensor_model_parallel_size"] * sizes["data_parallel_size"]
    per_replica *= sizes["pipeline_model_parallel_size"]
    if per_replica > gpus or gpus % per_replica:
        shown = " x ".join(f"{k}={v}" for k, v in sizes.items() if v > 1)
        raise ConfigError(
            f"the rollout needs {per_replica} GPUs per replica ({shown}) but the run has {gpus} "
            f"(trainer.n_gpus_per_node x trainer.nnodes), which it must divide",
            hint=f"add verl.{key}.tensor_model_parallel_size=1 (or a divisor of {gpus})",
        )


def check_with_verl(vc: VerlConfig) -> None:
    """verl's own checks (`validate_config`) and the dataclasses its workers will build, now.
    Imports verl (several seconds) but starts nothing."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    cfg = vc.cfg
    try:
        with contextlib.redirect_stdout(sys.stderr):  # verl prints its verdict; stdout carries the config
            validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
        for key in ("actor_rollout_ref.rollout", "algorithm"):
            node = vc.select(key)
            if node is not None and "_target_" in node:
                omega_conf_to_dataclass(node)
    except (AssertionError, ValueError, TypeError) as e:
        raise ConfigError(
            f"verl rejects the config: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}",
            hint="archer train ... --dry-run prints the composed verl config",
        ) from e
    except Exception as e:  # omegaconf / hydra validation errors
        if type(e).__module__.split(".")[0] in ("omegaconf", "hydra"):
            raise ConfigError(f"verl rejects the config: {str(e).strip().splitlines()[0]}") from e
        raise


def runtime_env(run_dir: Path) -> dict[str, str]:
    """Environment every Ray process of the run gets (through ray_kwargs.ray_init.runtime_env)."""
    from archer.core.engines.verl.capture import DEFAULT_PG_TIMEOUT_S, PG_TIMEOUT_ENV

    root = str(Path(__file__).resolve().parents[4])
    env = {
        "VERL_USE_EXTERNAL_MODULES": "archer.core.engines.verl.plugin",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
        "TENSORBOARD_DIR": str(Path(run_dir).resolve() / "tensorboard"),
        PG_TIMEOUT_ENV: os.environ.get(PG_TIMEOUT_ENV, str(DEFAULT_PG_TIMEOUT_S)),
    }
    for name in (
        "WANDB_MODE",
        "WANDB_ENTITY",
        "WANDB_RUN_GROUP",
        "WANDB_TAGS",
        "WANDB_API_KEY",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC",
    ):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def wandb_env(logging: Any) -> dict[str, str]:
    """trainer.logging.wandb_entity/group/tags as the environment W&B reads (verl's tracker passes
    no entity, group or tags to wandb.init; W&B takes them from WANDB_ENTITY, WANDB_RUN_GROUP and
    WANDB_TAGS). Unset keys leave the caller's environment as it is."""
    env = {}
    if logging.get("wandb_entity"):
        env["WANDB_ENTITY"] = str(logging["wandb_entity"])
    if logging.get("wandb_group"):
        env["WANDB_RUN_GROUP"] = str(logging["wandb_group"])
    if logging.get("wandb_tags"):
        env["WANDB_TAGS"] = ",".join(str(t) for t in logging["wandb_tags"])
    return env


def apply_runtime_env(vc: VerlConfig, run_dir: Path) -> None:
    """Merge archer's environment into ray_kwargs.ray_init.runtime_env.env_vars (user values win)."""
    existing = vc.select("ray_kwargs.ray_init.runtime_env.env_vars") or {}
    merged = {**runtime_env(run_dir), **wandb_env(vc.select("archer.logging") or {}), **dict(existing)}
    existing_modules = dict(existing).get("VERL_USE_EXTERNAL_MODULES")
    if existing_modules and "archer.core.engines.verl.plugin" not in existing_modules.split(","):
        merged["VERL_USE_EXTERNAL_MODULES"] = existing_modules + ",archer.core.engines.verl.plugin"
    _set(vc.cfg, "ray_kwargs.ray_init.runtime_env.env_vars", merged)
