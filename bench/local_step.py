"""Seconds per GRPO step: archer's local engine (tracing on) against TRL's GRPOTrainer, side by side.

Same tiny Qwen2 (built once, saved to a temp folder, loaded by both), same char tokenizer, same
prompts, 16 prompts x 4 samples x up to 32 new tokens, same exact-match reward, no KL, one
optimizer step per rollout batch. Each side runs a few untimed warm-up steps, then the median of
the timed steps is reported, alternating blocks so that machine noise hits both.

    python bench/local_step.py                 # CPU, 1M-parameter model (h128/L4)
    python bench/local_step.py --device cuda   # one GPU
    python bench/local_step.py --steps 20 --hidden 256 --layers 4

Needs `trl==1.12.0` (pip install -e '.[bench]'; verl's extra already pins it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_model_folder(root: Path, hidden: int, layers: int, seed: int) -> Path:
    from omegaconf import OmegaConf

    from archer.core.models.tiny import build_char_tokenizer, build_tiny_qwen2

    tok = build_char_tokenizer()
    tiny = OmegaConf.create(
        dict(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=4 * hidden,
            max_position_embeddings=128,
            tie_word_embeddings=True,
        )
    )
    model = build_tiny_qwen2(
        tiny, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, seed=seed
    )
    folder = root / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_data(root: Path, n: int, seed: int) -> Path:
    from archer.core.data.synth import write_arithmetic

    write_arithmetic(root / "data", n=n, val_n=0, seed=seed, difficulty="easy")
    return root / "data" / "train.parquet"


def archer_trainer(model_dir: Path, data_file: Path, out: Path, args) -> object:
    from archer.core.config import compose
    from archer.core.engines.local.trainer import LocalTrainer

    overrides = [
        f"model.path={model_dir}",
        f"data.train_files=[{data_file}]",
        "data.val_files=[]",
        f"trainer.device={args.device}",
        "warmup.enable=false",
        "trainer.val_before_train=false",
        "data.train_batch_size=16",
        "rollout.n=4",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "actor.ppo_mini_batch_size=16",
        "actor.ppo_micro_batch_size=64",
        "actor.ppo_epochs=1",
        "actor.use_kl_loss=false",
        "actor.optim.lr=1e-5",
        f"trainer.total_steps={10**6}",
        "trace.enable=true",
        f"model.dtype={args.dtype}",
        "data.max_prompt_length=16",
        f"seed={args.seed}",
        f"rollout.compile_decode={str(args.compile_decode).lower()}",
    ]
    c = compose("quickstart-arith", overrides)  # the figures of docs/benchmarks.md: arithmetic task
    t = LocalTrainer(c, out)
    t.setup()
    return t


def trl_trainer(model_dir: Path, data_file: Path, out: Path, args) -> tuple[object, list[float]]:
    import datasets
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from archer.core.rewards import score_batch

    table = pq.read_table(data_file)
    prompts = [m[0]["content"] for m in table.column("prompt").to_pylist()]
    answers = [rm["ground_truth"] for rm in table.column("reward_model").to_pylist()]
    ds = datasets.Dataset.from_dict({"prompt": prompts, "answer": answers})

    def reward(completions, answer, **_):
        return [s.reward for s in score_batch("arithmetic", list(completions), list(answer))]

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = GRPOConfig(
        output_dir=str(out),
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bf16",
        per_device_train_batch_size=64,
        num_generations=4,
        max_completion_length=args.max_new_tokens,
        beta=0.0,
        learning_rate=1e-5,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_steps=10**6,
        temperature=1.0,
        top_p=1.0,
        gradient_accumulation_steps=1,
        seed=args.seed,
        disable_tqdm=True,
    )
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())
            if len(stamps) >= stop_at[0]:
                control.should_training_stop = True

    stop_at = [0]
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[Stamp()],
    )
    return (trainer, stamps, stop_at)


def time_archer(t, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        t.step()
        out.append(time.perf_counter() - t0)
    return out


def time_trl(handle, steps: int) -> list[float]:
    trainer, stamps, stop_at = handle
    start = len(stamps)
    stop_at[0] = start + steps + 1
    t0 = time.perf_counter()
    trainer.train()  # runs until the callback stops it
    marks = [t0] + stamps[start:]
    return [b - a for a, b in zip(marks, marks[1:])][1:]  # drop the first (includes train() set-up)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="timed steps per side per block")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compile-decode",
        action="store_true",
        help="archer decodes with a static cache + compiled forward (CUDA graphs); TRL's generate "
        "always runs with disable_compile=True",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_model_folder(root, args.hidden, args.layers, args.seed)
        data = make_data(root, 2000, args.seed)
        a = archer_trainer(model_dir, data, root / "archer", args)
        params = sum(p.numel() for p in a.model.parameters())
        t = trl_trainer(model_dir, data, root / "trl", args)
        time_archer(a, 5 if args.compile_decode else 3)  # warm-up (and compilation)
        time_trl(t, 2)
        archer_times, trl_times = [], []
        for _ in range(args.blocks):
            archer_times += time_archer(a, args.steps)
            trl_times += time_trl(t, args.steps)
        trace_stats = a.trace.stats().as_dict() if a.trace is not None else {}
        a.close()
    med_a, med_t = statistics.median(archer_times), statistics.median(trl_times)
    result = {
        "device": args.device,
        "dtype": args.dtype,
        "params": params,
        "prompts": 16,
        "samples": 4,
        "max_new_tokens": args.max_new_tokens,
        "archer_s_per_step": round(med_a, 4),
        "trl_s_per_step": round(med_t, 4),
        "speedup": round(med_t / med_a, 2),
        "archer_steps": len(archer_times),
        "trl_steps": len(trl_times),
        "archer_trace_steps_written": trace_stats.get("steps_written"),
        "archer_compile_decode": args.compile_decode,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"model: Qwen2 h{args.hidden}/L{args.layers} ({params:,} parameters), {args.device} {args.dtype}"
        )
        print(f"archer local engine (trace on): {med_a:.3f} s/step (median of {len(archer_times)})")
        print(f"TRL GRPOTrainer:                {med_t:.3f} s/step (median of {len(trl_times)})")
        print(f"archer is {med_t / med_a:.2f}x faster per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
