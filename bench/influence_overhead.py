"""Influence tracing overhead: the PPO update with and without the tracer, at the default knobs.

Times archer's real update (`archer.core.engines.local.update.ppo_update`: one optimizer step over
the batch, micro-batched) on a random-weight model, then the same update with the influence tracer
capturing `training_loss` inside its backward, plus the scoring. Reports the median over the timed
repetitions, the capture/solve/score split (`profile_timing`, which synchronises the device), the
projected dimensions and the peak memory.

    python bench/influence_overhead.py                                   # CPU, tiny model
    python bench/influence_overhead.py --device cuda --model qwen2.5-1.5b --responses 16 \\
        --prompt-len 128 --response-len 2048 --micro 4 --dtype bf16       # one H100

Needs only torch and transformers (no omegaconf), so it runs on a bare GPU box.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {
    # name: hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (128, 512, 4, 4, 2, 100),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936),
}


def build_model(name: str, dtype, device, seed: int, checkpointing: bool):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    h, inter, layers, heads, kv, vocab = MODELS[name]
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=h,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        use_cache=False,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def build_batch(B: int, P: int, R: int, vocab: int, group_size: int, seed: int):
    import torch

    from archer.core.rollout.batch import Rollout

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(R // 2, R + 1, (B,), generator=g)
    lengths[0] = R
    resp = torch.randint(3, vocab, (B, R), generator=g)
    mask = (torch.arange(R)[None, :] < lengths[:, None]).long()
    resp = resp * mask
    rollout = Rollout(
        prompt_ids=torch.randint(3, vocab, (B, P), generator=g),
        prompt_mask=torch.ones(B, P, dtype=torch.long),
        response_ids=resp,
        response_mask=mask,
        truncated=torch.zeros(B, dtype=torch.bool),
        group=[i // group_size for i in range(B)],
        sample=[i % group_size for i in range(B)],
    )
    rewards = torch.tensor([1.0 if (i % group_size) < group_size // 2 else 0.0 for i in range(B)])
    adv_seq = (rewards - 0.5) * 2
    advantages = adv_seq[:, None] * mask.float()
    return rollout, rewards, adv_seq, advantages


def actor_config(B: int, micro: int, group_size: int) -> SimpleNamespace:
    return SimpleNamespace(
        policy_loss="vanilla",
        clip_ratio_low=0.2,
        clip_ratio_high=0.2,
        clip_ratio_c=3.0,
        aspo_dual_clip=3.0,
        archer=SimpleNamespace(
            token_entropy_quantile=0.8,
            low_entropy_clip_ratio_low=0.2,
            low_entropy_clip_ratio_high=0.2,
            high_entropy_clip_ratio_low=0.4,
            high_entropy_clip_ratio_high=0.4,
            high_entropy_kl_scale=0.0,
        ),
        loss_agg_mode="token-mean",
        ppo_epochs=1,
        ppo_mini_batch_size=B // group_size,
        ppo_micro_batch_size=micro,
        use_kl_loss=False,
        kl_loss_coef=0.0,
        kl_loss_type="low_var_kl",
        entropy_coeff=0.0,
        optim=SimpleNamespace(grad_clip=1.0),
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="tiny", choices=sorted(MODELS))
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--responses", type=int, default=16)
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--response-len", type=int, default=32)
    p.add_argument("--micro", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument(
        "--filter", default=None, help="influence.module_name_filter (default: the config default)"
    )
    p.add_argument("--max-modules", type=int, default=None)
    p.add_argument("--factor", type=int, default=None)
    p.add_argument("--hessian-source", default="response", choices=["response", "token"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch

    from archer.core.engines.local.influence_step import LocalInfluence
    from archer.core.engines.local.update import UpdateBatch, ppo_update
    from archer.influence.settings import InfluenceSettings

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = build_model(args.model, dtype, device, 0, args.checkpointing)
    vocab = MODELS[args.model][5]
    B = args.responses
    rollout, rewards, adv_seq, advantages = build_batch(
        B, args.prompt_len, args.response_len, vocab, args.group_size, 0
    )
    actor = actor_config(B, args.micro, args.group_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, foreach=True)
    knobs = {"enable": True, "profile_timing": True, "hessian_source": args.hessian_source}
    if args.filter is not None:
        knobs["module_name_filter"] = args.filter
    if args.max_modules is not None:
        knobs["max_modules"] = args.max_modules
    if args.factor is not None:
        knobs["projection_dim_factor"] = args.factor
    settings = InfluenceSettings(**knobs)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def update(hook=None):
        batch = UpdateBatch(rollout=rollout, old_log_prob=None, advantages=advantages)
        return ppo_update(
            model,
            opt,
            None,
            batch,
            actor,
            group_size=args.group_size,
            temperature=1.0,
            device=device,
            micro_hook=hook,
        )

    base_times, traced_times, splits = [], [], []
    infl = LocalInfluence(model, settings)
    for rep in range(args.reps + 1):  # rep 0 warms up both paths
        sync()
        t0 = time.perf_counter()
        update()
        sync()
        t_base = time.perf_counter() - t0

        sync()
        t0 = time.perf_counter()
        infl.begin(rollout, rewards, adv_seq, rollout.group)
        update(infl.micro_hook)
        sync()
        t_upd = time.perf_counter() - t0
        _, metrics = infl.finish()
        sync()
        t_total = time.perf_counter() - t0
        if rep:
            base_times.append(t_base)
            traced_times.append(t_total)
            splits.append(
                {
                    "capture": metrics["timing_s/influence_capture"],
                    "solve": metrics["timing_s/influence_solve"],
                    "score": metrics["timing_s/influence_score"],
                    "traced_update_only": t_upd,
                    "tokens": metrics["influence/tokens_captured"],
                }
            )
            last = metrics
    base = statistics.median(base_times)
    traced = statistics.median(traced_times)
    med = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": args.model,
        "dtype": args.dtype,
        "params": sum(p.numel() for p in model.parameters()),
        "responses": B,
        "prompt_len": args.prompt_len,
        "response_len": args.response_len,
        "tokens_captured": int(med["tokens"]),
        "micro_batch": args.micro,
        "modules": int(last["influence/modules"]),
        "max_module_D": int(last["influence/max_module_dim"]),
        "update_s": round(base, 4),
        "traced_update_and_scoring_s": round(traced, 4),
        "overhead_pct": round(100 * (traced - base) / base, 2),
        "capture_s": round(med["capture"], 4),
        "solve_s": round(med["solve"], 4),
        "score_s": round(med["score"], 4),
        "capture_plus_scoring_pct_of_update": round(
            100 * (med["capture"] + med["solve"] + med["score"]) / base, 2
        ),
        "scoring_pct_of_update": round(100 * (med["solve"] + med["score"]) / base, 2),
        "peak_memory_estimate_mb": round(last["influence/peak_memory_estimate_mb"], 1),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
        "hessian_source": args.hessian_source,
        "filter": settings.module_name_filter,
        "max_modules": settings.max_modules,
        "factor": settings.projection_dim_factor,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:38s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
