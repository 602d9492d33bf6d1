"""Where a chain-task model goes wrong: its held-out chains, answered greedily, sorted into kinds.

For a run of the chain task (the quickstart), the warm-up's model (`<run>/warmup`) and the final
checkpoint answer every validation chain greedily; each answer is

- `exact`: the worked solution, character for character;
- `teacher slip`: the warm-up teacher's slip (the chain's first carry or borrow forgotten);
- `wrong result`: it first leaves the worked solution at a digit of an intermediate or final
  result (a decisive token: a carry dropped later in the chain, a wrong sum);
- `wrong copy`: it first leaves it anywhere else (a term of the chain copied wrong, `=`, length).

    python bench/chain_errors.py runs/qs            # a quickstart run (save_every=0 keeps the last)
    python bench/chain_errors.py runs/qs --examples 5
    python bench/chain_errors.py runs/qs --rollouts 25   # what GRPO sampled, per 25 traced steps

Needs the run's `config.yaml`, `data/val.parquet`, `warmup/` and a checkpoint. With `--rollouts K`
it reads only the trace (`<run>/trace`, every response sampled in training) and prints, per window
of K steps, the same kinds over the sampled responses, the share of prompt groups with contrast
(both rewards present: the only groups GRPO learns from) and the mean group accuracy of the chains
with and without a carry or borrow (where the warm-up's errors sit).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("exact", "teacher slip", "wrong result", "wrong copy")


def classify(chain: str, response: str, slip: str = "carry") -> str:
    """`slip`: the run's warmup.slip (the teacher's slip that counts as `teacher slip`)."""
    from archer.core.data.chain import result_digit_mask, worked_solution

    gold = worked_solution(chain)
    if response == gold:
        return "exact"
    if response == worked_solution(chain, slip=slip):
        return "teacher slip"
    i = next((k for k, (a, b) in enumerate(zip(response, gold)) if a != b), min(len(response), len(gold)))
    return "wrong result" if i < len(gold) and result_digit_mask(list(gold))[i] else "wrong copy"


def answers(model_dir: Path, cfg, tokenizer, prompts) -> list[str]:
    from archer.core.evaluation.samplers import LocalSampler
    from archer.core.models.loading import load_policy

    model, _ = load_policy(cfg, init_from=model_dir)
    model.eval()
    sampler = LocalSampler(model, tokenizer, device="cpu")
    out = sampler.sample(
        [p.ids for p in prompts],
        n=1,
        temperature=0.0,
        top_p=1.0,
        max_new_tokens=int(cfg.rollout.max_new_tokens),
    )
    return [tokenizer.decode(cs[0].token_ids, skip_special_tokens=True) for cs in out]


def run_slip(run: Path) -> str:
    """The run's warmup.slip from its config.yaml (`carry` where the file or key is missing)."""
    from omegaconf import OmegaConf

    try:
        return str(OmegaConf.load(run / "config.yaml").warmup.get("slip", "carry"))
    except (OSError, AttributeError):
        return "carry"


def rollouts(run: Path, window: int) -> int:
    """The kinds of the sampled training responses of the trace, per window of `window` steps."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from archer.core.data.chain import has_carry

    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    slip = run_slip(run)
    files = sorted((run / "trace" / "steps").glob("step_*.parquet"))
    if not files:
        raise SystemExit(f"no trace steps under {run / 'trace' / 'steps'}")
    cols = ["step", "group_index", "prompt_ids", "response_ids", "reward"]
    print(f"# {run}: sampled training responses, per {window} steps")
    print(
        "| steps | responses | "
        + " | ".join(KINDS)
        + " | groups with contrast | accuracy: carry / no carry |"
    )
    print("|---|---|" + "---|" * len(KINDS) + "---|---|")
    for lo in range(0, len(files), window):
        counts: Counter = Counter()
        groups: dict[tuple[int, int], list[dict]] = {}
        for f in files[lo : lo + window]:
            for r in pq.read_table(f, columns=cols).to_pylist():
                groups.setdefault((r["step"], r["group_index"]), []).append(r)
        acc: dict[bool, list[float]] = {True: [], False: []}
        contrast = 0
        for rows in groups.values():
            chain = tokenizer.decode(rows[0]["prompt_ids"], skip_special_tokens=True)
            for r in rows:
                text = tokenizer.decode(r["response_ids"], skip_special_tokens=True)
                counts[classify(chain, text, slip)] += 1
            rewards = [r["reward"] for r in rows]
            contrast += len(set(rewards)) > 1
            acc[has_carry(chain)].append(sum(rewards) / len(rewards))
        n = sum(counts.values())
        steps = sorted({s for s, _ in groups})
        mean = {k: sum(v) / len(v) if v else float("nan") for k, v in acc.items()}
        print(
            f"| {steps[0]}–{steps[-1]} | {n} | "
            + " | ".join(f"{counts.get(k, 0) / n:.2f}" for k in KINDS)
            + f" | {contrast / len(groups):.2f} | {mean[True]:.2f} / {mean[False]:.2f} |"
        )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--examples", type=int, default=3, help="examples of each wrong kind to print")
    ap.add_argument(
        "--rollouts", type=int, metavar="K", help="classify the traced training samples, per K steps"
    )
    args = ap.parse_args()
    if args.rollouts:
        return rollouts(args.run, args.rollouts)

    import torch

    from archer.core.config import compose
    from archer.core.engines.local.checkpoint import latest_checkpoint
    from archer.core.models.loading import load_tokenizer
    from archer.core.rollout.prompts import load_datasets

    torch.set_num_threads(1)
    run = args.run
    cfg = compose(str(run / "config.yaml")).cfg
    tokenizer = load_tokenizer(cfg.model)
    _, val, _ = load_datasets(cfg, tokenizer, run)
    val = val[: cfg.rollout.val.max_prompts or None]
    chains = [tokenizer.decode(p.ids, skip_special_tokens=True) for p in val]
    models = {"warm-up": run / "warmup"}
    last = latest_checkpoint(run)
    if last is not None:
        models[f"after GRPO ({last.name})"] = last
    print(f"# {run}: {len(val)} held-out chains, greedy")
    print("| model | " + " | ".join(KINDS) + " |")
    print("|---|" + "---|" * len(KINDS))
    examples = {}
    for name, path in models.items():
        responses = answers(path, cfg, tokenizer, val)
        kinds = [classify(c, r, str(cfg.warmup.slip)) for c, r in zip(chains, responses)]
        counts = Counter(kinds)
        print(f"| {name} | " + " | ".join(str(counts.get(k, 0)) for k in KINDS) + " |")
        examples[name] = list(zip(chains, responses, kinds))
    from archer.core.data.chain import worked_solution

    for name, rows in examples.items():
        for kind in KINDS[2:]:
            for c, r, _ in [x for x in rows if x[2] == kind][: args.examples]:
                print(f"{name} · {kind}: {c} {r}   (worked: {worked_solution(c)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
