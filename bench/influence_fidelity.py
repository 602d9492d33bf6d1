"""Fidelity of projected influence against exact, full-dimension influence (issue 19).

For one batch of rollouts the script runs archer's real PPO update (`ppo_update`, learning rate 0 so
every setting sees the same weights) with the influence tracer capturing `training_loss` inside its
backward, once per setting, and compares the token scores of each projected setting with

  (a) exact scores for the same modules (`influence.projection=identity`, fp32 factors), and
  (b) exact scores for every decoder linear (q/k/v/o/gate/up/down of every block),

by Spearman rank correlation over all scored tokens of the step and by the overlap of the top 10 %
tokens (highest signed score: the tokens that most push the policy toward the accepted responses).
Settings: projection factors {8, 16, 32, 64, 128} × module sets {last-4 down_proj, last block,
every 4th block, all linears}, with archer's default caps (max_proj_vector_sum=128,
max_hessian_dim=4096) and, with `--caps off` or `both`, without them. Each row also gives the projected size
D, the factor bytes stored per token, and the traced update's time over the plain update's.

Two sources of rollouts:

    # (i) CPU: the arithmetic quickstart model after training, real rollouts of its task
    archer train --preset quickstart-arith --out runs/qs    # once (minutes)
    python bench/influence_fidelity.py --run runs/qs --out fidelity-cpu.json

    # (ii) GPU: a Qwen2.5-0.5B-shaped model (random weights: no hub access), random responses with
    #      half of every group rewarded
    python bench/influence_fidelity.py --model qwen2.5-0.5b --device cuda --dtype bf16 \\
        --caps both --out fidelity-gpu.json

Mode (ii) needs only torch, transformers, numpy (no omegaconf, no archer install). The figures are
printed as a Markdown table and written as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

FACTORS = (8, 16, 32, 64, 128)
SET_NAMES = ("down4", "last_block", "every4", "all")
SET_LABELS = {
    "down4": "last 4 down_proj",
    "last_block": "last block",
    "every4": "every 4th block",
    "all": "all linears",
}
LINEAR = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"
TOP_FRACTION = 0.1


def module_set(name: str, layers: int) -> tuple[str, int]:
    """(module_name_filter, max_modules) of a module set, for a model with `layers` blocks."""
    if name == "down4":
        return r"mlp\.down_proj$", 4
    if name == "last_block":
        return rf"layers\.{layers - 1}\.{LINEAR}", 0
    if name == "every4":
        blocks = "|".join(str(i) for i in range(0, layers, 4))
        return rf"layers\.({blocks})\.{LINEAR}", 0
    if name == "all":
        return rf"layers\.\d+\.{LINEAR}", 0
    raise ValueError(name)


# --------------------------------------------------------------------------- statistics
def _ranks(x: Any) -> Any:
    import numpy as np

    order = np.argsort(x, kind="stable")
    xs = x[order]
    bounds = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    r = np.empty(len(x))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        r[order[lo:hi]] = (lo + 1 + hi) / 2.0  # ties share their mean rank
    return r


def spearman(a: Any, b: Any) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def top_overlap(a: Any, b: Any, fraction: float = TOP_FRACTION) -> float:
    import numpy as np

    k = max(1, math.ceil(fraction * len(a)))
    return len(np.intersect1d(np.argsort(-a, kind="stable")[:k], np.argsort(-b, kind="stable")[:k])) / k


def group_auc(scores: list[Any], groups: list[Any], accepted: list[bool]) -> float:
    """Mean over groups of P(an accepted response's mean influence > a rejected one's), ties ½
    (the `auc` of `archer collect`)."""
    import numpy as np

    by_group: dict[Any, tuple[list[float], list[float]]] = {}
    for r, v in enumerate(scores):
        if v is None or not np.isfinite(v).any():
            continue
        m = float(np.nanmean(v))
        pos, neg = by_group.setdefault(groups[r], ([], []))
        (pos if accepted[r] else neg).append(m)
    aucs = []
    for pos, neg in by_group.values():
        if pos and neg:
            p, n = np.array(pos)[:, None], np.array(neg)[None, :]
            aucs.append(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))
    return float(np.mean(aucs)) if aucs else float("nan")


def paired(x: list[Any], y: list[Any]) -> tuple[Any, Any]:
    """Token scores of the rows scored in both (finite in both), flattened."""
    import numpy as np

    xs, ys = [], []
    for u, v in zip(x, y):
        if u is None or v is None:
            continue
        ok = np.isfinite(u) & np.isfinite(v)
        xs.append(u[ok].astype(np.float64))
        ys.append(v[ok].astype(np.float64))
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------- rollouts
def run_rollouts(run: Path, prompts: int, device: Any, seed: int) -> dict[str, Any]:
    """Real rollouts of a trained local-engine run: its latest checkpoint, its training prompts,
    its rollout.n samples each, its reward function and GRPO advantages."""
    import torch
    from omegaconf import OmegaConf

    from archer.core.algorithms.advantages import grpo
    from archer.core.export.checkpoints import find_checkpoint, load_model, read_run_config
    from archer.core.models.loading import load_tokenizer
    from archer.core.rewards import score_batch
    from archer.core.rollout.generation import decode_responses, generate
    from archer.core.rollout.prompts import load_datasets

    ckpt = find_checkpoint(run)
    cfg = OmegaConf.create(read_run_config(ckpt.run_dir or run))
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(ckpt.path, dtype="fp32", device=device)
    model.train()
    train, _, _ = load_datasets(cfg, tokenizer, ckpt.run_dir or run)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train), generator=g)[:prompts].tolist()
    chosen = [train[i] for i in pick]
    torch.manual_seed(seed)
    n = int(cfg.rollout.n)
    rollout = generate(
        model,
        tokenizer,
        [p.ids for p in chosen],
        n=n,
        max_new_tokens=int(cfg.rollout.max_new_tokens),
        temperature=float(cfg.rollout.temperature),
        device=device,
    )
    texts = decode_responses(tokenizer, rollout)
    answers = [chosen[i // n].answer for i in range(len(texts))]
    scores = score_batch(str(cfg.reward.function), texts, answers)
    rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
    token_rewards = torch.zeros(rollout.response_mask.shape)
    last = (rollout.response_mask.sum(1) - 1).clamp(min=0)
    token_rewards[torch.arange(len(texts)), last] = rewards
    advantages, _ = grpo(token_rewards, rollout.response_mask.float(), rollout.group)
    adv_seq = advantages[:, 0].clone()
    return {
        "model": model,
        "rollout": rollout,
        "rewards": rewards,
        "adv_seq": adv_seq,
        "advantages": advantages,
        "group_size": n,
        "layers": int(model.config.num_hidden_layers),
        "source": f"{ckpt.describe()}, {len(chosen)} training prompts x {n} samples (real rollouts)",
        "mixed_groups": sum(
            1 for gi in range(len(chosen)) if len(set(rewards[gi * n : (gi + 1) * n].tolist())) > 1
        ),
    }


def synthetic_rollouts(name: str, args: argparse.Namespace, device: Any, dtype: Any) -> dict[str, Any]:
    """A random-weight model of a known shape and random responses, half of every group rewarded."""
    from influence_overhead import MODELS, build_batch, build_model

    model = build_model(name, dtype, device, args.seed, args.checkpointing)
    rollout, rewards, adv_seq, advantages = build_batch(
        args.responses, args.prompt_len, args.response_len, MODELS[name][5], args.group_size, args.seed
    )
    return {
        "model": model,
        "rollout": rollout,
        "rewards": rewards,
        "adv_seq": adv_seq,
        "advantages": advantages,
        "group_size": args.group_size,
        "layers": MODELS[name][2],
        "source": (
            f"{name}-shaped model with random weights ({args.dtype}), {args.responses} random "
            f"responses of {args.response_len // 2}-{args.response_len} tokens in groups of "
            f"{args.group_size}, half rewarded"
        ),
        "mixed_groups": args.responses // args.group_size,
    }


# --------------------------------------------------------------------------- one traced update
class Bench:
    def __init__(self, data: dict[str, Any], device: Any, micro: int, reps: int):
        import torch
        from influence_overhead import actor_config

        self.data, self.device, self.reps = data, device, reps
        self.model = data["model"]
        B = data["rollout"].size
        self.actor = actor_config(B, min(micro, B), data["group_size"])
        # learning rate 0: the update runs in full (forward, backward, optimizer) but every setting
        # sees the same weights
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.0, weight_decay=0.0)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def update(self, hook: Any = None) -> None:
        from archer.core.engines.local.update import UpdateBatch, ppo_update

        d = self.data
        batch = UpdateBatch(rollout=d["rollout"], old_log_prob=None, advantages=d["advantages"])
        ppo_update(
            self.model,
            self.opt,
            None,
            batch,
            self.actor,
            group_size=d["group_size"],
            temperature=1.0,
            device=self.device,
            micro_hook=hook,
        )

    def traced(self, settings: Any) -> tuple[list[Any], dict[str, float], float]:
        """(per-row scores, metrics, overhead %): each repetition times the plain update and then
        the traced update + scoring, so both see the same machine load; the overhead is the ratio
        of the medians."""
        import torch

        from archer.core.engines.local.influence_step import LocalInfluence

        d = self.data
        infl = LocalInfluence(self.model, settings)
        plain, traced = [], []
        try:
            for rep in range(max(1, self.reps + (self.reps > 0))):  # the first warms up
                self.sync()
                t0 = time.perf_counter()
                self.update()
                self.sync()
                t1 = time.perf_counter()
                infl.begin(d["rollout"], d["rewards"], d["adv_seq"], d["rollout"].group)
                self.update(infl.micro_hook)
                scores, metrics = infl.finish()
                self.sync()
                if rep or not self.reps:  # --reps 0: a single run, timed without a warm-up
                    plain.append(t1 - t0)
                    traced.append(time.perf_counter() - t1)
        finally:
            infl.tracer.close()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        base = statistics.median(plain)
        return scores, metrics, 100 * (statistics.median(traced) - base) / base


# --------------------------------------------------------------------------- main
def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| module set | factor | caps | D (max) | factor bytes/token | ρ vs exact (same modules) | "
        "top-10 % vs exact (same) | ρ vs exact (all linears) | top-10 % vs exact (all) | overhead |"
    )
    lines = [head, "| " + " | ".join(["---"] * 10) + " |"]
    for r in rows:
        lines.append(
            f"| {SET_LABELS[r['set']]} | {r['factor']} | {r['caps']} | {r['max_D']} | {r['bytes_per_token']} "
            f"| {r['rho_same']:.3f} | {r['top_same']:.2f} | {r['rho_all']:.3f} | {r['top_all']:.2f} "
            f"| {r['overhead_pct']:.1f} % |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a trained local-engine run directory (mode i)")
    src.add_argument("--model", choices=["tiny", "qwen2.5-0.5b", "qwen2.5-1.5b"], help="mode ii")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="model dtype (mode ii)")
    p.add_argument("--prompts", type=int, default=16, help="prompts sampled from the run (mode i)")
    p.add_argument("--responses", type=int, default=32, help="mode ii")
    p.add_argument("--group-size", type=int, default=8, help="mode ii")
    p.add_argument("--prompt-len", type=int, default=64, help="mode ii")
    p.add_argument("--response-len", type=int, default=256, help="mode ii")
    p.add_argument("--micro", type=int, default=8, help="update micro-batch size")
    p.add_argument(
        "--reps",
        type=int,
        default=2,
        help="timed repetitions per setting after a warm-up (0: one run, no warm-up)",
    )
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (mode ii)")
    p.add_argument("--factors", default=",".join(map(str, FACTORS)))
    p.add_argument("--sets", default=",".join(SET_NAMES))
    p.add_argument(
        "--caps",
        default="default",
        choices=["default", "off", "both"],
        help="projected sizes with archer's default caps (max_proj_vector_sum=128, max_hessian_dim=4096), "
        "without them, or both",
    )
    p.add_argument(
        "--hessian-mode",
        default="inverse",
        choices=["inverse", "identity"],
        help="influence.hessian_mode of every setting (identity separates projection noise from damping)",
    )
    p.add_argument(
        "--damping",
        default="rank",
        choices=["dimension", "rank"],
        help="influence.damping of every setting, the exact references included (automatic λ: "
        "0.1·tr(H)/D or 0.1·tr(H)/min(R, D))",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()

    import numpy as np
    import torch

    from archer.influence.settings import InfluenceSettings

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    factors = [int(f) for f in args.factors.split(",")]
    sets = [s for s in args.sets.split(",") if s]
    if args.run is not None:
        data = run_rollouts(args.run, args.prompts, device, args.seed)
    else:
        data = synthetic_rollouts(args.model, args, device, dtype)
    if data["mixed_groups"] == 0:
        print("no prompt group has both accepted and rejected responses: nothing to score", file=sys.stderr)
        return 1
    bench = Bench(data, device, args.micro, args.reps)
    L = data["layers"]
    print(f"# {data['source']}; {data['mixed_groups']} mixed groups", file=sys.stderr)

    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    result = {
        "source": data["source"],
        "mixed_groups": data["mixed_groups"],
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": commit,
        "command": " ".join(sys.argv),
        "hessian_mode": args.hessian_mode,
        "damping": args.damping,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "exact": {},
        "bf16_vs_fp32_factors": None,
        "self_influence": {},
        "rows": [],
    }

    def save() -> None:
        """Write what is measured so far (temp file + rename), so a run cut short keeps its rows."""
        if args.out:
            tmp = args.out.with_name(args.out.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(args.out)

    def knobs(set_name: str, **kw: Any) -> InfluenceSettings:
        flt, mx = module_set(set_name, L)
        return InfluenceSettings(
            enable=True,
            module_name_filter=flt,
            max_modules=mx,
            hessian_mode=args.hessian_mode,
            damping=args.damping,
            **kw,
        )

    exact: dict[str, list[Any]] = {}
    exact_meta: dict[str, dict[str, Any]] = result["exact"]
    for name in dict.fromkeys(["all", *sets]):
        scores, metrics, overhead = bench.traced(knobs(name, projection="identity", storage_dtype="fp32"))
        exact[name] = scores
        exact_meta[name] = {
            "modules": int(metrics["influence/modules"]),
            "max_D": int(metrics["influence/max_module_dim"]),
            "tokens": int(metrics["influence/tokens_captured"]),
            "overhead_pct": overhead,
        }
        print(f"# exact {name}: {exact_meta[name]}", file=sys.stderr)
        save()

    rows: list[dict[str, Any]] = result["rows"]
    variants = {"default": {}, "off": {"max_proj_vector_sum": 0, "max_hessian_dim": 0}}
    caps_variants = [(k, v) for k, v in variants.items() if args.caps in (k, "both")]
    for name in sets:
        for factor in factors:
            for caps, extra in caps_variants:
                s = knobs(name, projection_dim_factor=factor, **extra)
                try:
                    scores, metrics, overhead = bench.traced(s)
                except Exception as e:  # a refused setting (D above a cap) is a row, not a crash
                    print(f"# {name} factor {factor} caps {caps}: {e}", file=sys.stderr)
                    continue
                from archer.influence.capture import InfluenceRecorder

                rec = InfluenceRecorder(bench.model, s)
                per_token = sum(a + b for a, b in rec.dims) * (2 if s.storage_dtype == "bf16" else 4)
                rec.remove()
                a_same, b_same = paired(scores, exact[name])
                a_all, b_all = paired(scores, exact["all"])
                row = {
                    "set": name,
                    "factor": factor,
                    "caps": caps,
                    "modules": int(metrics["influence/modules"]),
                    "max_D": int(metrics["influence/max_module_dim"]),
                    "bytes_per_token": int(per_token),
                    "tokens": int(len(a_same)),
                    "rho_same": spearman(a_same, b_same),
                    "top_same": top_overlap(a_same, b_same),
                    "rho_all": spearman(a_all, b_all),
                    "top_all": top_overlap(a_all, b_all),
                    "overhead_pct": overhead,
                }
                rows.append(row)
                save()
                print(json.dumps(row), file=sys.stderr)
    # the exact same-module rows against exact all-linears: the module choice alone
    for name in sets:
        if name == "all":
            continue
        a, b = paired(exact[name], exact["all"])
        rows.append(
            {
                "set": name,
                "factor": 1,
                "caps": "exact",
                "modules": exact_meta[name]["modules"],
                "max_D": exact_meta[name]["max_D"],
                "bytes_per_token": None,
                "tokens": int(len(a)),
                "rho_same": 1.0,
                "top_same": 1.0,
                "rho_all": spearman(a, b),
                "top_all": top_overlap(a, b),
                "overhead_pct": exact_meta[name]["overhead_pct"],
            }
        )
    # bf16 storage (the default) against fp32 storage, default knobs
    default = InfluenceSettings(enable=True, hessian_mode=args.hessian_mode, damping=args.damping)
    s16, _, _ = bench.traced(default)
    s32, _, _ = bench.traced(
        InfluenceSettings(
            enable=True, hessian_mode=args.hessian_mode, damping=args.damping, storage_dtype="fp32"
        )
    )
    a, b = paired(s16, s32)
    bf16 = result["bf16_vs_fp32_factors"] = {
        "rho": spearman(a, b),
        "top": top_overlap(a, b),
        "rel_err": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
    }
    save()

    # self-influence: the contrast with and without each response's own gradient
    from archer.influence.selection import accepted_mask

    groups = list(data["rollout"].group)
    accepted = accepted_mask(data["rewards"].tolist(), groups)
    self_infl = result["self_influence"]
    for label, base in (("default knobs", {}), ("exact, all linears", {"projection": "identity"})):
        kw = dict(base)
        if "projection" in kw:
            flt, mx = module_set("all", L)
            kw.update(module_name_filter=flt, max_modules=mx, storage_dtype="fp32")
        inc, _, _ = bench.traced(
            InfluenceSettings(enable=True, hessian_mode=args.hessian_mode, damping=args.damping, **kw)
        )
        loo, _, _ = bench.traced(
            InfluenceSettings(
                enable=True,
                hessian_mode=args.hessian_mode,
                damping=args.damping,
                contrast="leave_one_out",
                **kw,
            )
        )
        a, b = paired(inc, loo)
        self_infl[label] = {
            "auc_include": group_auc(inc, groups, accepted),
            "auc_leave_one_out": group_auc(loo, groups, accepted),
            "rho_include_vs_loo": spearman(a, b),
        }

    save()
    print(
        f"{data['source']}; {data['mixed_groups']} mixed groups; device {result['device']}; "
        f"commit {commit}; {result['date']}"
    )
    print(f"exact all-linears: {exact_meta['all']}")
    print(markdown(rows))
    print(
        f"\nbf16 vs fp32 factor storage (default knobs): Spearman {bf16['rho']:.4f}, "
        f"top-10 % overlap {bf16['top']:.2f}, relative error {bf16['rel_err']:.2e}"
    )
    for label, v in self_infl.items():
        print(
            f"{label}: within-group AUC of accepted vs rejected mean influence {v['auc_include']:.3f} "
            f"(include) vs {v['auc_leave_one_out']:.3f} (leave_one_out); token Spearman include vs "
            f"leave_one_out {v['rho_include_vs_loo']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
