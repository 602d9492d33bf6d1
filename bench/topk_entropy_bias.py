"""How far the top-k truncated entropy (what a vLLM-style server's top-k log-probs give) is from the
exact entropy the hf replica computes, on a real model's sampled positions.

    python bench/topk_entropy_bias.py --model DIR [--prompts FILE.parquet] [--n 64] [--ks 5,10,20]
    python bench/topk_entropy_bias.py --zipf          # known distributions over a 32k vocabulary

For each sampled response position the hf replica's scorer (`rollout_hf.response_log_probs` with
`entropy_topk`) gives the exact entropy H of log_softmax(logits / T); `branching.topk_entropy` on
the same position's top-k log-probs gives ARPO's truncated H_k (the quantity the branching rule
reads, so the rule itself needs no estimate) and bounds lower <= H <= upper from the tail mass.
Printed per k: mean H, mean H_k, mean bias H_k - H, relative bias, the tail mass, how often the
bounds bracket H. `--model` defaults to nothing: give a model folder (e.g. a run's `warmup/`).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def rows_for(full: np.ndarray, logps: np.ndarray, ks: list[int], vocab: int) -> dict[int, dict[str, float]]:
    from archer.core.agent.branching import topk_entropy

    out = {}
    for k in ks:
        est = [topk_entropy(sorted(lp, reverse=True)[:k], vocab) for lp in logps]
        trunc = np.array([e.truncated for e in est])
        lower = np.array([e.lower for e in est])
        upper = np.array([e.upper for e in est])
        tail = np.array([e.tail_mass for e in est])
        out[k] = {
            "exact_mean": float(full.mean()),
            "truncated_mean": float(trunc.mean()),
            "bias_mean": float((trunc - full).mean()),
            "relative_bias": float((trunc - full).sum() / max(full.sum(), 1e-12)),
            "tail_mass_mean": float(tail.mean()),
            "bracketed": float(((lower <= full + 1e-6) & (full <= upper + 1e-6)).mean()),
        }
    return out


def zipf(ks: list[int]) -> dict:
    V = 32_000
    gen = torch.Generator().manual_seed(0)
    out = {}
    for s in (1.1, 1.5, 2.0):
        ranks = torch.arange(1, V + 1, dtype=torch.float64)
        logits = (-s * ranks.log())[torch.randperm(V, generator=gen)]
        logp = torch.log_softmax(logits, -1)
        full = np.array([float(-(logp.exp() * logp).sum())])
        top = [logp.topk(max(ks)).values.numpy()]
        out[f"zipf_s{s}"] = rows_for(full, top, ks, V)
    return out


def model(
    path: str, prompts_file: str | None, n: int, ks: list[int], temperature: float, max_new: int
) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archer.core.engines.verl.rollout_hf import response_log_probs
    from archer.core.rollout.generation import generate

    tok = AutoTokenizer.from_pretrained(path)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if prompts_file:
        import pyarrow.parquet as pq

        rows = pq.read_table(prompts_file).to_pylist()[:n]
        texts = [
            r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else str(r["prompt"]) for r in rows
        ]
    else:
        texts = [f"{100 + 7 * i}*{300 + 11 * i}=" for i in range(n)]
    prompts = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    torch.manual_seed(0)
    with torch.inference_mode():
        ro = generate(m, tok, prompts, n=1, max_new_tokens=max_new, temperature=temperature, top_p=1.0)
        ids = torch.cat([ro.prompt_ids, ro.response_ids], 1)
        mask = torch.cat([ro.prompt_mask, torch.ones_like(ro.response_ids)], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = m(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        P = ro.prompt_ids.shape[1]
        logp = torch.log_softmax(logits[:, P - 1 : -1].float() / temperature, -1)
        _, full, _ = response_log_probs(
            m, ro.prompt_ids, ro.prompt_mask, ro.response_ids, temperature, entropy_topk=max(ks)
        )
    lengths = ro.response_lengths.tolist()
    fulls, tops = [], []
    for i, L in enumerate(lengths):
        for j in range(int(L)):
            fulls.append(float(full[i, j]))
            tops.append(logp[i, j].topk(max(ks)).values.numpy())
    V = int(m.config.vocab_size)
    by_k = rows_for(np.array(fulls), tops, ks, V)
    return {"model": path, "vocab": V, "positions": len(fulls), "by_k": by_k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--prompts")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--ks", default="5,10,20")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--zipf", action="store_true")
    a = ap.parse_args()
    ks = [int(k) for k in a.ks.split(",")]
    if not a.zipf and not a.model:
        ap.error("give --model DIR or --zipf")
    out = zipf(ks) if a.zipf else model(a.model, a.prompts, a.n, ks, a.temperature, a.max_new)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
