"""Shared pieces of the verl CPU tests: a tiny Qwen2 on disk, a step batch in verl's V1 row layout
(nested prompt+response rows carrying archer's row fields), verl's real training worker built in
this process, and the local engine's update on the same batch and weights as the reference."""

from __future__ import annotations

import os
import socket
from functools import partial
from pathlib import Path

import numpy as np
import torch
from influence_fixtures import Batch, make_batch, settings

from archer.influence.settings import InfluenceSettings

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY_SHAPE = dict(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIXED_PRECISION = {  # verl's FSDP mixed precision per archer model.dtype (archer/core/engines/verl/config.py)
    "fp32": {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
    "bf16": {"param_dtype": "bf16", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
}


def save_tiny_model(folder: Path, seed: int = 0, shape: dict | None = None) -> Path:
    """A Qwen2 of `shape` (model.tiny keys; default 2 layers, hidden 32) with the char tokenizer,
    saved in fp32 (loads offline)."""
    from omegaconf import OmegaConf

    from archer.core.models.tiny import build_char_tokenizer, build_tiny_qwen2

    tok = build_char_tokenizer()
    tiny = OmegaConf.create(dict(shape or TINY_SHAPE))
    model = build_tiny_qwen2(tiny, len(tok), pad_token_id=0, eos_token_id=1, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class StepBatch(Batch):
    """influence_fixtures' batch (prompt groups of n; two mixed groups with 2 right and 2 wrong,
    then an all-right and an all-wrong group) with verl's string uids."""

    @property
    def uids(self) -> list[str]:
        return [f"u{g}" for g in self.groups]

    @property
    def size(self) -> int:
        return len(self.responses)

    def traced_rows(self) -> list[int]:
        """Rows of the groups that have both right and wrong answers (the ones influence scores)."""
        mixed = {
            g
            for g in set(self.groups)
            if len({self.rewards[i] for i in range(self.size) if self.groups[i] == g}) == 2
        }
        return [i for i in range(self.size) if self.groups[i] in mixed]


def make_step(seed: int = 0) -> StepBatch:
    b = make_batch(seed=seed, mixed_groups=2, n=4)
    return StepBatch(b.prompts, b.responses, b.groups, b.rewards)


def influence_settings(**kw) -> InfluenceSettings:
    """influence_fixtures' settings, as verl runs them: training_loss, random projections (k = d/4),
    identity mode unless asked (its scores scale with the square of the captured gradients)."""
    return settings(
        **{"output_function": "training_loss", "projection_dim_factor": 4, "hessian_mode": "identity", **kw}
    )


# ----------------------------------------------------------------------------- the local engine
def local_reference(
    model_dir: Path,
    step: StepBatch,
    settings: InfluenceSettings,
    *,
    micro: int = 4,
    loss_agg_mode: str = "token-mean",
    policy_loss: str = "vanilla",
    archer: dict | None = None,
    aspo_dual_clip: float = 3.0,
    old_noise: float = 0.0,
    device: str = "cpu",
    dtype: str = "fp32",
    loss_masks: list[list[int]] | None = None,
):
    """Old log-probs, entropy [B, R], advantages and per-row influence from archer's local
    engine (`ppo_update` with the tracer inside the real backward) on the same weights.
    `old_noise` perturbs the old log-probs (seeded) so that ratios leave the clip ranges.
    `dtype` bf16 loads the weights in bf16, as the local engine does with model.dtype=bf16.
    `loss_masks` (agent mode): per row, 0 on the tool-result tokens (the Rollout's loss_mask; the
    advantages are computed over it, as the local trainer's `_advantages`)."""
    from transformers import AutoModelForCausalLM

    from archer.core.algorithms import get_adv_estimator
    from archer.core.config.compose import compose_dict
    from archer.core.engines.local.forward import batch_logprobs
    from archer.core.engines.local.influence_step import LocalInfluence
    from archer.core.engines.local.update import UpdateBatch, ppo_update
    from archer.core.rollout.batch import Rollout, left_pad, right_pad

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=TORCH_DTYPES[dtype], attn_implementation="sdpa"
    ).to(device)
    pid, pmask = left_pad(step.prompts, 0)
    resp = right_pad([torch.tensor(r) for r in step.responses], 0)
    rmask = torch.zeros_like(resp)
    for i, r in enumerate(step.responses):
        rmask[i, : len(r)] = 1
    lmask = None
    if loss_masks is not None:
        lmask = torch.zeros_like(resp)
        for i, m in enumerate(loss_masks):
            lmask[i, : len(m)] = torch.as_tensor(m)
    groups = sorted(set(step.uids), key=step.uids.index)
    ro = Rollout(
        prompt_ids=pid,
        prompt_mask=pmask,
        response_ids=resp,
        response_mask=rmask,
        truncated=torch.zeros(step.size, dtype=torch.bool),
        group=[groups.index(u) for u in step.uids],
        sample=[0] * step.size,
        loss_mask=lmask,
    )
    tmask = ro.train_mask
    old, entropy = batch_logprobs(model, ro, micro_batch_size=micro, with_entropy=True, device=device)
    if old_noise:
        old = (old + old_noise * torch.randn(old.shape, generator=torch.Generator().manual_seed(5))) * rmask
    rewards = torch.tensor(step.rewards)
    token_rewards = torch.zeros(resp.shape, dtype=torch.float32)
    token_rewards[torch.arange(step.size), rmask.sum(-1) - 1] = rewards
    adv, _ = get_adv_estimator("grpo")(token_rewards, tmask.float(), np.array(step.uids, dtype=object))
    adv = adv * tmask
    n = step.uids.count(step.uids[0])
    cfg = compose_dict(
        {
            "actor": {
                "ppo_epochs": 1,
                "ppo_mini_batch_size": step.size // n,
                "ppo_micro_batch_size": micro,
                "loss_agg_mode": loss_agg_mode,
                "policy_loss": policy_loss,
                "archer": dict(archer or {}),
                "aspo_dual_clip": aspo_dual_clip,
                "optim": {"lr": 1e-3, "weight_decay": 0.0},
            },
            "data": {"train_batch_size": step.size // n},
            "rollout": {"n": n},
        }
    )
    influence = LocalInfluence(model, settings)
    seq_adv = adv.sum(-1) / tmask.sum(-1)
    influence.begin(ro, rewards, seq_adv, step.uids)
    hook = influence.micro_hook
    if not settings.output.in_training_backward:  # log_prob*: one extra pass before the update
        influence.separate_backward(adv, rewards, micro_batch_size=micro, temperature=1.0, device=device)
        hook = None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    ppo_update(
        model,
        optimizer,
        None,
        UpdateBatch(rollout=ro, old_log_prob=old, advantages=adv),
        cfg.actor,
        group_size=n,
        temperature=1.0,
        device=device,
        micro_hook=hook,
    )
    rows, _ = influence.finish()
    return {"old": old, "entropy": entropy, "advantages": adv, "influence": rows}


# ----------------------------------------------------------------------------- verl's layout
def row_keys(step: StepBatch) -> list[str]:
    """verl's per-row keys (uid_index_sample) as archer's trainer builds them."""
    return [f"{u}_{i}_0" for i, u in enumerate(step.uids)]


def influence_plan(
    step: StepBatch,
    advantages: torch.Tensor,
    settings: InfluenceSettings,
    masks: list[list[int]] | None = None,
):
    """archer's selection of the groups to trace (plan_influence) with the step's sequence advantages
    (over the response mask, as archer's verl trainer computes them)."""
    from archer.core.engines.verl.steps import plan_influence
    from archer.core.rollout.record import sequence_advantages

    masks = masks if masks is not None else [[1] * len(r) for r in step.responses]
    seq_adv = sequence_advantages([advantages[i, : len(m)] for i, m in enumerate(masks)], masks)
    return plan_influence(
        row_keys(step), np.zeros(step.size, dtype=bool), np.array(step.rewards), seq_adv, settings
    )


def tool_result_masks(step) -> list[list[int]]:
    """Agent rows: each response is a call, a tool result (0: no loss), then the answer; the
    result span is tokens [L/4, L/2) (at least one token), the last token is the model's."""
    masks = []
    for r in step.responses:
        L = len(r)
        lo, hi = max(1, L // 4), max(2, L // 2)
        masks.append([0 if lo <= j < hi and j < L - 1 else 1 for j in range(L)])
    return masks


def nested(rows: list) -> torch.Tensor:
    return torch.nested.as_nested_tensor([torch.as_tensor(r) for r in rows], layout=torch.jagged)


def v1_rows(
    step: StepBatch,
    old: torch.Tensor,
    adv: torch.Tensor,
    plan_fields: dict | None,
    order: list[int],
    masks: list[list[int]] | None = None,
):
    """The step's rows as verl's V1 trainer hands them to the actor: nested prompt+response
    tensors (`loss_mask` = `response_mask`), response-aligned old log-probs and advantages, plus
    archer's row fields; `order` permutes the rows (as balancing would) — identity is archer_row.
    `masks` (agent rows): per row 0 on tool-result tokens, as archer's agent loop sets
    `response_mask` and verl's TQ adapter copies it to `loss_mask`."""
    from verl.utils import tensordict_utils as tu

    L = [len(step.responses[i]) for i in order]
    fields = {
        "prompts": nested([step.prompts[i] for i in order]),
        "responses": nested([step.responses[i] for i in order]),
        "input_ids": nested([step.prompts[i] + step.responses[i] for i in order]),
        "position_ids": nested([list(range(len(step.prompts[i]) + len(step.responses[i]))) for i in order]),
        "response_mask": nested([masks[i] if masks is not None else [1] * n for i, n in zip(order, L)]),
        "loss_mask": nested([masks[i] if masks is not None else [1] * n for i, n in zip(order, L)]),
        "old_log_probs": nested([old[i, :n].float() for i, n in zip(order, L)]),
        "advantages": nested([adv[i, :n].float() for i, n in zip(order, L)]),
    }
    if plan_fields is not None:
        for k, v in plan_fields.items():
            fields[k] = torch.as_tensor(v[order])
    return tu.get_tensordict(fields)


def update_meta(td, *, mini_batch_size: int, influence: bool = True, shuffle: bool = False):
    """The batch-level values the V1 trainer's `_update_actor` sets (extra_info on the worker)."""
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(
        td,
        calculate_entropy=False,
        global_batch_size=mini_batch_size,
        mini_batch_size=mini_batch_size,
        epochs=1,
        seed=42,
        dataloader_kwargs={"shuffle": shuffle},
        temperature=1.0,
        archer_influence=influence,
    )
    return td


# ----------------------------------------------------------------------------- verl's worker
def init_single_process_group(backend: str = "gloo") -> None:
    """One rank in this process: gloo on CPU, nccl on a GPU."""
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
        if backend == "nccl":
            torch.cuda.set_device(0)
        dist.init_process_group(backend, rank=0, world_size=1)


def engine_configs(
    model_dir: Path,
    *,
    dynamic: bool,
    remove_padding: bool,
    micro: int = 4,
    max_tokens: int = 40,
    checkpointing: bool = False,
    strategy: str = "fsdp2",
    dtype: str = "fp32",
):
    """verl's configs for the training engine; `dtype` bf16 is archer's verl mapping of model.dtype=bf16
    (fp32 master weights, bf16 compute, fp32 gradient reduction)."""
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig

    model = HFModelConfig(
        path=str(model_dir),
        override_config={"attn_implementation": "sdpa"},
        use_remove_padding=remove_padding,
        enable_gradient_checkpointing=checkpointing,
    )
    engine = FSDPEngineConfig(
        strategy=strategy,
        use_dynamic_bsz=dynamic,
        micro_batch_size_per_gpu=micro,
        infer_micro_batch_size_per_gpu=micro,
        max_token_len_per_gpu=max_tokens,
        infer_max_token_len_per_gpu=max_tokens,
        use_torch_compile=False,
        model_dtype="fp32",
        mixed_precision=dict(MIXED_PRECISION[dtype]),
    )
    optim = FSDPOptimizerConfig(lr=1e-3, weight_decay=0.0, total_training_steps=10, clip_grad=1e9)
    return model, engine, optim, CheckpointConfig()


def actor_config(
    engine_cfg,
    *,
    policy_loss: str = "vanilla",
    loss_agg_mode: str = "token-mean",
    mini: int = 16,
    micro: int = 4,
):
    from verl.workers.config import FSDPActorConfig, PolicyLossConfig

    return FSDPActorConfig(
        strategy=engine_cfg.strategy,
        ppo_mini_batch_size=mini,
        ppo_micro_batch_size_per_gpu=micro,
        rollout_n=1,
        use_dynamic_bsz=engine_cfg.use_dynamic_bsz,
        fsdp_config=engine_cfg,
        loss_agg_mode=loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode=policy_loss),
        clip_ratio_c=3.0,
    )


def training_worker(
    model_dir: Path,
    settings: InfluenceSettings | None,
    *,
    dynamic: bool = False,
    remove_padding: bool = True,
    policy_loss: str = "vanilla",
    loss_knobs: dict | None = None,
    mini: int = 16,
    micro: int = 4,
    checkpointing: bool = False,
    strategy: str = "fsdp2",
    dtype: str = "fp32",
    backend: str = "gloo",
):
    """archer's `ArcherTrainingWorker` around verl's real FSDP engine, in this process (1 rank)."""
    from verl.workers.config import TrainingWorkerConfig
    from verl.workers.utils.losses import ppo_loss

    from archer.core.engines.verl.worker import ArcherTrainingWorker

    init_single_process_group(backend)
    model_cfg, engine_cfg, optim_cfg, ckpt_cfg = engine_configs(
        model_dir,
        dynamic=dynamic,
        remove_padding=remove_padding,
        micro=micro,
        checkpointing=checkpointing,
        strategy=strategy,
        dtype=dtype,
    )
    worker = ArcherTrainingWorker(
        TrainingWorkerConfig(
            model_type="language_model",
            model_config=model_cfg,
            engine_config=engine_cfg,
            optimizer_config=optim_cfg,
            checkpoint_config=ckpt_cfg,
        )
    )
    worker.reset()
    worker.set_loss_fn(
        partial(ppo_loss, config=actor_config(engine_cfg, policy_loss=policy_loss, mini=mini, micro=micro))
    )
    worker.archer_setup(
        {"loss_knobs": loss_knobs or {}, "influence": None if settings is None else settings.__dict__}
    )
    return worker
