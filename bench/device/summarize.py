"""One verl run's figures for docs/benchmarks.md: the step-time split (generation, old log-prob,
update, influence capture/solve/score), the rollout-vs-actor log-prob difference, and the trace
(responses, entropy for all, finite influence for the traced ones).

    python bench/device/summarize.py RUN_DIR
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

KEYS = (
    "timing_s/step",
    "timing_s/gen",
    "timing_s/old_log_prob",
    "timing_s/update_actor",
    "time/influence",
    "timing_s/influence_capture",
    "timing_s/influence_solve",
    "timing_s/influence_score",
    "timing_s/update_weights",
    "timing_s/save_checkpoint",
    "training/rollout_probs_diff_max",
    "critic/score/mean",
    "influence/groups_selected",
    "influence/rows_emitted",
)


def main(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    print(f"run {run}: steps {[r['step'] for r in steps]}")
    for key in KEYS:
        vals = [r[key] for r in steps if key in r]
        if vals:
            later = vals[1:] or vals
            series = " ".join(f"{v:.4g}" for v in vals)
            print(f"  {key:34s} {series}   (mean after step 1: {sum(later) / len(later):.4g})")
    val = [(r["step"], v) for r in rows for k, v in r.items() if k.startswith("val-core/")]
    print(f"  validation {val}")
    from archer.core.trace.reader import TraceReader, list_entropy, list_influence

    trace = TraceReader(run / "trace")
    n = with_entropy = with_infl = finite = 0
    for step in trace.steps():
        table = trace.read_step(step)
        for row in range(table.num_rows):
            n += 1
            with_entropy += len(list_entropy(table, row)) > 0
            infl = list_influence(table, row)
            if infl is not None:
                with_infl += 1
                finite += all(math.isfinite(float(x)) for x in infl)
    print(
        f"  trace steps {trace.steps()}: {n} responses, {with_entropy} with entropy, "
        f"{with_infl} with influence ({finite} finite)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
