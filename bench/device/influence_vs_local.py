"""Influence captured inside verl's real FSDP engine vs archer's local engine: one batch, one set of weights.

The comparison of tests/verl/test_verl_engine.py (archer's ArcherTrainingWorker around verl's FSDPEngine,
in this process, one rank; archer's local engine's `ppo_update` with the tracer in the same backward),
parameterised for a GPU and bf16 (issue 15, run A: "influence equals the same batch scored with the local
engine within the bf16 tolerance you measure and state"). Both engines get the same weights (a Qwen2 built
in code, saved in fp32), the same rows, the local engine's old log-probs and GRPO advantages; verl gets the
rows shuffled. Reported per selected response and overall, verl against local: max |Δ| / max |score|,
relative L2 error and Spearman rank correlation of the per-token influence scores, and the same for the
per-token entropy of the old-log-prob pass. With --dtype bf16 the same comparison runs in fp32 first (the
reference agreement), and local bf16 is also compared with local fp32 (what bf16 alone moves).

bf16 means what archer runs with model.dtype=bf16: the local engine loads the weights in bf16
(archer/core/models/loading.py); verl keeps fp32 master weights and computes in bf16 with fp32 gradient
reduction (FSDP mixed precision, archer/core/engines/verl/config.py).

    python bench/device/influence_vs_local.py --device cpu --dtype fp32 --shape tiny
    PYTHONPATH=/tmp/archer-site:$PWD python3 bench/device/influence_vs_local.py \\
        --device cuda --dtype bf16 --shape qwen2.5-0.5b --json $OUT/influence-bf16.json

Exit status: 0 with the figures printed, 1 when something is missing or fails (one line says what),
2 for bad arguments, 3 when --tolerance is given and a bf16/fp32 figure exceeds it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
T0 = time.monotonic()

QWEN_05B = dict(  # bench/device/verl_gpu.sh's "half": Qwen2.5-0.5B's shape with the character vocabulary
    hidden_size=896,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    intermediate_size=4864,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def fail(msg: str, hint: str = "") -> None:
    print(f"error: {msg}" + (f"\n  hint: {hint}" if hint else ""), file=sys.stderr, flush=True)
    sys.exit(1)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--shape", choices=["tiny", "qwen2.5-0.5b"], default="tiny")
    ap.add_argument("--layers", type=int, default=0, help="override the shape's layer count (a quick smoke)")
    ap.add_argument("--hessian", choices=["identity", "inverse"], default="identity")
    ap.add_argument("--strategy", choices=["fsdp2", "fsdp"], default="fsdp2", help="verl's FSDP2 or FSDP1")
    ap.add_argument(
        "--layout",
        choices=["padded", "packed"],
        default="padded",
        help="verl's rows right-padded (what archer runs with SDPA) or packed (use_remove_padding)",
    )
    ap.add_argument("--groups", type=int, default=0, help="prompt groups (qwen shape; default 4)")
    ap.add_argument("--n", type=int, default=0, help="responses per group (qwen shape; default 8)")
    ap.add_argument("--response-len", type=int, default=64, help="mean response length (qwen shape)")
    ap.add_argument("--micro", type=int, default=0, help="micro-batch size (default 4 tiny, 8 qwen)")
    ap.add_argument("--checkpointing", action="store_true", help="verl's gradient checkpointing on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=None, help="exit 3 if max|Δ|/max|score| exceeds it")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where the model is saved (default a temp dir)"
    )
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- set-up
def import_harness(device: str):
    """tests/verl/verl_harness.py (and tests/influence_fixtures.py), with verl importable and, on CPU
    only, archer's CPU platform for verl activated before any verl.workers import."""
    for p in (ROOT, ROOT / "tests", ROOT / "tests" / "verl"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        fail(f"cannot import {e.name}", "run this with the python that has torch and transformers")
    for name in ("omegaconf", "tensordict", "verl"):
        try:
            __import__(name)
        except ImportError as e:
            fail(
                f"cannot import {name} ({e})",
                "install the verl extra (pip install -e '.[verl]'), or on the GPU machine run "
                "bench/device/install.sh and export PYTHONPATH=/tmp/archer-site:$PWD",
            )
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            fail(
                "--device cuda but torch sees no CUDA device", f"torch {torch.__version__}; use --device cpu"
            )
    else:
        from archer.core.engines.verl.cpu_platform import activate

        activate(force=True)
    import verl_harness as H

    return H


def make_step(H, args):
    """tiny: the CPU test's step (4 groups x 4, two mixed); qwen: `groups` groups of `n` responses of about
    `response_len` tokens over the char vocabulary, all but the last group mixed (the last all right)."""
    import torch

    if args.shape == "tiny":
        return H.make_step(seed=3)
    groups, n = args.groups or 4, args.n or 8
    g = torch.Generator().manual_seed(args.seed + 1)
    prompts, responses, gids, rewards = [], [], [], []
    lo, hi = max(2, args.response_len * 3 // 4), max(3, args.response_len * 5 // 4)
    for k in range(groups):
        prompt = torch.randint(4, 100, (int(torch.randint(8, 17, (1,), generator=g)),), generator=g).tolist()
        for s in range(n):
            L = int(torch.randint(lo, hi + 1, (1,), generator=g))
            responses.append(torch.randint(4, 100, (L,), generator=g).tolist())
            prompts.append(prompt)
            gids.append(k)
            rewards.append(1.0 if (k == groups - 1 or s < n // 2) else 0.0)
    return H.StepBatch(prompts, responses, gids, rewards)


def influence_settings(H, args):
    """tiny: the CPU test's settings; qwen: archer's default knobs (those of verl_gpu.sh's half run),
    fp32 storage so that the comparison sees the computed scores."""
    kw = {"hessian_mode": args.hessian}
    if args.hessian == "inverse":
        kw["hessian_source"] = "token"  # what the CPU test checks (test_dual_token_losses_match_local_engine)
    if args.shape == "tiny":
        return H.influence_settings(**kw)
    from archer.influence.settings import InfluenceSettings

    return InfluenceSettings(
        enable=True,
        output_function="training_loss",
        module_name_filter=r"mlp\.down_proj$",
        max_modules=4,
        projection_dim_factor=32,
        storage_dtype="fp32",
        **kw,
    )


# ----------------------------------------------------------------------------- figures
def rankdata(x):
    """Average ranks (scipy.stats.rankdata's method; scipy is not on the GPU machine)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    sorter = np.argsort(x, kind="mergesort")
    inv = np.empty(sorter.size, dtype=np.intp)
    inv[sorter] = np.arange(sorter.size)
    xs = x[sorter]
    obs = np.r_[True, xs[1:] != xs[:-1]]
    dense = obs.cumsum()[inv]
    count = np.r_[np.nonzero(obs)[0], len(obs)]
    return 0.5 * (count[dense] + count[dense - 1] + 1)


def spearman(a, b) -> float:
    if len(a) < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def agreement(a, b) -> dict:
    """`a` (verl, or the candidate) against `b` (the local engine, the reference)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = np.abs(a - b)
    nb = float(np.linalg.norm(b))
    return {
        "tokens": int(b.size),
        "max_abs_diff": float(diff.max()) if b.size else 0.0,
        "max_abs_ref": scale,
        "max_rel": float(diff.max() / scale) if scale > 0 else float("nan"),
        "rel_l2": float(np.linalg.norm(a - b) / nb) if nb > 0 else float("nan"),
        "spearman": spearman(a, b),
    }


def compare_rows(cand: dict, ref: dict, rows: list[int]) -> dict:
    import numpy as np

    per = {int(r): agreement(cand[r], ref[r]) for r in rows}
    overall = agreement(np.concatenate([cand[r] for r in rows]), np.concatenate([ref[r] for r in rows]))
    overall["worst_row_max_rel"] = max(p["max_rel"] for p in per.values())
    overall["worst_row_rel_l2"] = max(p["rel_l2"] for p in per.values())
    # nan where a row's values are all equal on one side (e.g. bf16 entropy of a near-uniform model)
    rho = [p["spearman"] for p in per.values() if not math.isnan(p["spearman"])]
    overall["min_row_spearman"] = min(rho) if rho else float("nan")
    overall["rows_without_spearman"] = len(per) - len(rho)
    return {"overall": overall, "rows": per}


def fmt(o: dict) -> str:
    s = f"max|Δ|/max|s| {o['max_rel']:.2e}  relL2 {o['rel_l2']:.2e}  spearman {o['spearman']:.6f}"
    if "worst_row_max_rel" in o:
        s += (
            f"  | per row: worst max-rel {o['worst_row_max_rel']:.2e},"
            f" worst relL2 {o['worst_row_rel_l2']:.2e}, min spearman {o['min_row_spearman']:.6f}"
        )
    return s + f"  ({o['tokens']} tokens, max|s| {o['max_abs_ref']:.3e})"


# ----------------------------------------------------------------------------- one comparison
def run_pair(H, args, model_dir: Path, step, settings, dtype: str) -> dict:
    """The local engine and verl's engine in `dtype` on the step; influence and entropy per row."""
    import numpy as np
    import torch
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import response_from_nested

    micro = args.micro or (4 if args.shape == "tiny" else 8)
    say(f"{dtype}: local engine (old log-probs, entropy, ppo_update with influence) on {args.device}")
    t = time.monotonic()
    ref = H.local_reference(model_dir, step, settings, micro=micro, device=args.device, dtype=dtype)
    local_s = time.monotonic() - t
    if args.device == "cuda":
        torch.cuda.empty_cache()
    rows_ref = ref["influence"]
    selected = step.traced_rows()
    missing = [r for r in selected if rows_ref[r] is None]
    if missing:
        fail(f"{dtype}: the local engine scored no influence for rows {missing}")
    say(f"{dtype}: local engine done in {local_s:.1f}s; {len(selected)} selected rows")

    say(f"{dtype}: verl {args.strategy} engine ({args.layout}, {args.device}) — building the worker")
    t = time.monotonic()
    try:
        worker = H.training_worker(
            model_dir,
            settings,
            remove_padding=args.layout == "packed",
            mini=step.size,
            micro=micro,
            checkpointing=args.checkpointing,
            strategy=args.strategy,
            dtype=dtype,
            backend="nccl" if args.device == "cuda" else "gloo",
        )
    except Exception as e:  # noqa: BLE001  (the message is the result: e.g. FSDP1 on a CPU)
        fail(f"{dtype}: verl's {args.strategy} worker could not be built: {type(e).__name__}: {e}")
    order = [int(i) for i in np.random.default_rng(7).permutation(step.size)]

    say(f"{dtype}: verl old-log-prob pass with entropy")
    td = H.v1_rows(step, ref["old"], ref["advantages"], None, order)
    tu.assign_non_tensor(td, calculate_entropy=True, compute_loss=False, temperature=1.0)
    out = worker.infer_batch(td)
    ent = response_from_nested(out["entropy"], td["response_mask"])  # nested: one row per response
    verl_entropy = {i: ent[j].float().cpu().numpy()[: len(step.responses[i])] for j, i in enumerate(order)}
    local_entropy = {i: ref["entropy"][i, : len(step.responses[i])].float().numpy() for i in range(step.size)}

    say(f"{dtype}: verl update with influence capture")
    plan = H.influence_plan(step, ref["advantages"], settings)
    td = H.update_meta(
        H.v1_rows(step, ref["old"], ref["advantages"], plan.fields, order), mini_batch_size=step.size
    )
    worker.train_mini_batch(td)
    if args.device == "cuda":
        torch.cuda.synchronize()
    taken = worker.archer_take_influence()
    if taken is None:
        fail(f"{dtype}: verl's worker returned no influence after the update")
    rows_verl, metrics = taken
    verl_s = time.monotonic() - t
    if sorted(rows_verl) != selected:
        fail(f"{dtype}: verl scored rows {sorted(rows_verl)}, the local engine's selection is {selected}")
    for r in selected:
        if rows_verl[r].shape != rows_ref[r].shape or not np.isfinite(rows_verl[r]).all():
            fail(f"{dtype}: row {r}: verl's scores have shape {rows_verl[r].shape} or are not finite")
    say(f"{dtype}: verl done in {verl_s:.1f}s")
    result = {
        "dtype": dtype,
        "influence": compare_rows(rows_verl, rows_ref, selected),
        "entropy": compare_rows(verl_entropy, local_entropy, list(range(step.size))),
        "seconds": {"local": local_s, "verl": verl_s},
        "verl_metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "_local_rows": {r: rows_ref[r] for r in selected},
        "_verl_rows": {r: rows_verl[r] for r in selected},
        "_verl_entropy": verl_entropy,
        "_local_entropy": local_entropy,
    }
    del worker
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.layers < 0 or args.groups < 0 or args.n < 0 or args.micro < 0 or args.response_len < 2:
        print("error: --layers/--groups/--n/--micro must be >= 0 and --response-len >= 2", file=sys.stderr)
        return 2
    say(f"influence_vs_local: {' '.join(sys.argv[1:]) or '(defaults)'}")
    H = import_harness(args.device)
    import numpy as np
    import torch
    import transformers
    import verl

    torch.manual_seed(args.seed)
    shape = dict(H.TINY_SHAPE if args.shape == "tiny" else QWEN_05B)
    if args.layers:
        shape["num_layers"] = args.layers
    step = make_step(H, args)
    settings = influence_settings(H, args)
    with tempfile.TemporaryDirectory(prefix="archer-ivl-") as tmp:
        model_dir = (args.workdir or Path(tmp)) / f"model-{args.shape}-{shape['num_layers']}"
        model_dir.mkdir(parents=True, exist_ok=True)
        say(f"building the {args.shape} model ({shape}) in {model_dir}")
        H.save_tiny_model(model_dir, seed=args.seed, shape=shape)
        say(
            f"step: {step.size} responses in {len(set(step.groups))} groups, "
            f"{sum(map(len, step.responses))} response tokens; hessian {args.hessian}"
        )
        runs = {}
        for dtype in ["fp32", "bf16"] if args.dtype == "bf16" else ["fp32"]:
            runs[dtype] = run_pair(H, args, model_dir, step, settings, dtype)
    selected = step.traced_rows()
    report = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "shape": shape,
        "machine": {
            "host": platform.node(),
            "device": torch.cuda.get_device_name(0)
            if args.device == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "verl": getattr(verl, "__version__", "?"),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "selected_rows": selected,
        "runs": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in runs.items()},
    }
    print()
    print(
        f"verl ({args.strategy}, {args.layout}) vs local engine, {args.shape}, {args.device},"
        f" hessian {args.hessian}"
    )
    for dtype, r in runs.items():
        print(f"  {dtype} influence: {fmt(r['influence']['overall'])}")
        print(f"  {dtype} entropy:   {fmt(r['entropy']['overall'])}")
    if "bf16" in runs:  # what bf16 alone moves, engine against itself
        f, b = runs["fp32"], runs["bf16"]
        report["local_bf16_vs_fp32"] = {
            "influence": compare_rows(b["_local_rows"], f["_local_rows"], selected)["overall"],
            "entropy": compare_rows(b["_local_entropy"], f["_local_entropy"], list(range(step.size)))[
                "overall"
            ],
        }
        report["verl_bf16_vs_local_fp32"] = {
            "influence": compare_rows(b["_verl_rows"], f["_local_rows"], selected)["overall"],
            "entropy": compare_rows(b["_verl_entropy"], f["_local_entropy"], list(range(step.size)))[
                "overall"
            ],
        }
        for name in ("local_bf16_vs_fp32", "verl_bf16_vs_local_fp32"):
            label = name.replace("_vs_", " vs ").replace("_", " ")
            print(f"  {label} influence: {fmt(report[name]['influence'])}")
            print(f"  {label} entropy:   {fmt(report[name]['entropy'])}")
    print("  per selected response (influence, last dtype):")
    last = runs[args.dtype]
    for r, o in last["influence"]["rows"].items():
        e = last["entropy"]["rows"][r]
        print(
            f"    row {r:3d} ({o['tokens']:3d} tok): max-rel {o['max_rel']:.2e} relL2 {o['rel_l2']:.2e} "
            f"spearman {o['spearman']:.5f} | entropy max-rel {e['max_rel']:.2e} spearman {e['spearman']:.5f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp_json.write_text(json.dumps(report, indent=1, default=float))
        os.replace(tmp_json, args.json)
        say(f"figures written to {args.json}")
    worst = last["influence"]["overall"]["max_rel"]
    if not np.isfinite(worst):
        fail("the influence agreement is not finite")
    if args.tolerance is not None and worst > args.tolerance:
        print(
            f"error: {args.dtype} max|Δ|/max|score| {worst:.2e} exceeds --tolerance {args.tolerance:g}",
            file=sys.stderr,
        )
        return 3
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
