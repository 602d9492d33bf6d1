"""Does influence rank the decisive tokens of a worked chain first? (issue 22, item 2)

In a worked chain `12-3+8=9+8=17` most tokens are copies of the problem (`-3+8`, `+8`) or `=`; the
tokens that decide the answer are the digits of each intermediate result and of the final one
(`12`, `9`, `17`). For every response of a chain-task trace that has influence scores, this
script takes the top-5 tokens by |influence| and counts how many are such result digits; the
figure is that share over all scored responses, printed beside what a random choice of 5 tokens
would give (the share of result digits among the scored tokens) and beside the top-5 by entropy.

    python bench/influence_decisive.py --run archer/view/demo   # the shipped demo trace
    python bench/influence_decisive.py -- trainer.num_threads=1   # trains quickstart-influence, seed 0
    python bench/influence_decisive.py --seed 1 -- trainer.total_steps=250

Training runs the preset as it is (quickstart-influence is the chain task) in a clean run directory
with an empty warm-up cache in a temp dir (as bench/quickstart_seeds.py does); `--run` reads a run
made before. Needs the run's tokenizer (found next to the trace) and a trace written with
influence on a chain task.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart_seeds import commit, machine  # noqa: E402

TOP = 5


def measure(run: Path, top: int = TOP) -> dict:
    """Share of the top-`top` |influence| (and entropy) tokens per response that are result digits."""
    import numpy as np

    from archer.core.data.chain import result_digit_mask
    from archer.core.trace import TraceReader
    from archer.core.trace.decode import load_decoder, resolve_tokenizer

    reader = TraceReader(run)
    tok_path, note = resolve_tokenizer(None, reader.summary, reader.dir)
    decoder = load_decoder(tok_path, note=note)
    if not decoder.is_text:
        raise SystemExit(f"cannot decode the trace's tokens: {decoder.label}")
    hits_inf = hits_ent = picked = decisive = scored_tokens = responses = 0
    per_step = []
    for step in reader.steps():
        t = reader.read_step(step, ["response_ids", "entropy", "influence", "data_source"])
        s_hits = s_picked = 0
        for row in range(t.num_rows):
            if t.column("data_source")[row].as_py() != "chain":
                continue
            inf = t.column("influence")[row].values
            if inf is None:
                continue
            inf = np.asarray(inf.to_numpy(zero_copy_only=False), dtype=np.float64)
            ids = t.column("response_ids")[row].values.to_numpy()
            ent = np.asarray(t.column("entropy")[row].values.to_numpy(zero_copy_only=False), np.float64)
            texts = decoder.token_texts(ids.tolist())
            mask = np.asarray(result_digit_mask(texts), dtype=bool)
            ok = np.isfinite(inf)
            k = min(top, int(ok.sum()))
            if k == 0:
                continue
            idx = np.flatnonzero(ok)
            by_inf = idx[np.argsort(-np.abs(inf[idx]), kind="stable")[:k]]
            by_ent = idx[np.argsort(-ent[idx], kind="stable")[:k]]
            responses += 1
            picked += k
            hits_inf += int(mask[by_inf].sum())
            hits_ent += int(mask[by_ent].sum())
            decisive += int(mask[idx].sum())
            scored_tokens += len(idx)
            s_hits += int(mask[by_inf].sum())
            s_picked += k
        if s_picked:
            per_step.append((step, s_hits / s_picked))
    if not responses:
        raise SystemExit(f"no chain response with influence scores in {reader.dir}")
    return {
        "responses": responses,
        "top": top,
        "share_top_influence": hits_inf / picked,
        "share_top_entropy": hits_ent / picked,
        "share_random": decisive / scored_tokens,
        "per_step": per_step,
    }


def train(preset: str, seed: int, overrides: list[str], work: Path) -> Path:
    run = work / "run"
    cmd = [sys.executable, "-m", "archer", "train", "--preset", preset, "--out", str(run), f"seed={seed}"]
    cmd += [f"trainer.cache_dir={work / 'cache'}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise SystemExit(f"archer train failed (exit {proc.returncode}):\n{tail}")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="read this run (or trace) directory instead of training")
    ap.add_argument("--preset", default="quickstart-influence")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=TOP)
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for training (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="archer-decisive-") as tmp:
        run = args.run or train(args.preset, args.seed, args.overrides, Path(tmp))
        r = measure(run, args.top)
    where = str(args.run) if args.run else " ".join([args.preset, f"seed={args.seed}", *args.overrides])
    head = f"# {where} · commit {commit()} · {machine()}"
    print(head)
    print(f"responses with influence: {r['responses']}")
    print(
        f"share of result digits among the top-{r['top']} tokens per response: "
        f"|influence| {r['share_top_influence']:.3f} · entropy {r['share_top_entropy']:.3f} · "
        f"any {r['top']} tokens (chance) {r['share_random']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"run": where, "commit": commit(), "machine": machine(), **r}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
