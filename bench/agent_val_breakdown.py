"""What an agent preset's model gets wrong on held-out problems, by kind: right, the warm-up
teacher's off-by-one slip, a miscopied tool result, or a wrong/missing call; and the accuracy of
each 64-problem block (how much a 64-problem validation set moves with the sample).

    python bench/agent_val_breakdown.py RUN/warmup --seed 2 --val-n 512
    python bench/agent_val_breakdown.py RUN/warmup --preset aepo-quickstart --seed 0 -- warmup.label_noise=0.5

Greedy decoding (the preset's validation) with the real tools, from the given weights (a run's
`warmup/` folder or a checkpoint's model folder), on the first `--val-n` held-out problems of the
seed's task (the preset's own set is their prefix). Writes its run files to a temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kind(answer: str | None, gold: str, text: str) -> str:
    if answer == gold:
        return "right"
    if answer is not None and answer.isdigit() and gold.isdigit() and int(answer) == int(gold) + 1:
        return "teacher's slip (+1)"
    if gold in text:
        return "tool result seen, miscopied"
    return "wrong or missing call"


def main() -> int:
    from archer.core.config import compose
    from archer.core.engines.local.trainer import LocalTrainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--preset", default="arpo-quickstart")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-n", type=int, default=512)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="archer-breakdown-") as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        shutil.copytree(args.weights, run / "warmup")
        (run / "warmup" / ".complete").write_text("copied\n")  # RL's start: these weights
        c = compose(
            args.preset,
            [
                f"seed={args.seed}",
                f"data.synth.val_n={args.val_n}",
                f"rollout.val.max_prompts={args.val_n}",
                "trainer.num_threads=1",
                f"trainer.cache_dir={Path(tmp) / 'cache'}",
                *args.overrides,
            ],
        )
        t = LocalTrainer(c, run)
        try:
            t.setup()
            ps = t.val_prompts
            v = c.cfg.rollout.val
            _, _, texts, answers, batch = t.agent.rollout(
                t.model, ps, seed=int(c.cfg.seed) + 7, validation=True, n=1, temperature=float(v.temperature)
            )
        finally:
            t.close()
    total: collections.Counter = collections.Counter()
    by_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    right = []
    for tr, text, answer in zip(batch.trajectories, texts, answers):
        p = ps[tr.group]
        k = kind(answer, p.answer, text)
        total[k] += 1
        by_source[p.data_source][k] += 1
        right.append(k == "right")
    n = len(right)
    print(f"{args.weights} · {args.preset} seed {args.seed} · {n} held-out problems")
    for name, counts in [("all", total), *sorted(by_source.items())]:
        m = sum(counts.values())
        print(f"  {name} ({m}): " + ", ".join(f"{k} {v / m:.3f}" for k, v in counts.most_common()))
    blocks = [sum(right[i : i + 64]) / len(right[i : i + 64]) for i in range(0, n, 64)]
    print("  64-problem blocks: " + ", ".join(f"{b:.3f}" for b in blocks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
