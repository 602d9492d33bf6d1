"""Run directories with known contents for the `archer collect` tests, written with archer's own
pieces (compose for config.yaml, TraceWriter/build_step_table for the trace).

Every step has 2 prompt groups x 4 responses of 2 tokens. Influence and entropy are dyadic numbers
(exact in float16/float32), so the quality metrics have the hand-computed values below.

Run `inverse` (the reference: the first run with influence):
  step 1  group 0 accepted T,T,F,F  response means .375 .09375 | .1875 -.09375  -> AUC 3/4
          group 1 accepted T,F,F,F  means .875 | 0 -.015625 .015625            -> AUC 1
          top-4 of 16 tokens by |influence|: r4t0 r4t1 r0t0 r2t0; by entropy: r4t0 r0t0 r1t0 r3t1 -> 2/4
  step 2  group 0 has no influence (one-sided group)
          group 1 accepted T,F,T,F  means .1875 .1875 0 -.109375                -> AUC (1/2+1+0+1)/4 = 5/8
          7 scored tokens (r5t1 is NaN) -> k=2: top |influence| r4t0 r5t0; top entropy r4t0 r5t0 -> 1
          (r5t1 and the unscored rows have the highest entropy: counting them would change it)
  AUC = (3/4 + 1 + 5/8) / 3 = 19/24; overlap = (1/2 + 1) / 2 = 3/4
Run `identity`: step 1 = 2 x inverse (Spearman 1); step 2 = 2 x inverse with r4t1 raised above r5t0
  (ranks 5 and 6 of 7 swapped: rho = 1 - 6*2/(7*48) = 27/28), r5t1 finite (0).
  Spearman vs inverse = (1 + 27/28) / 2 = 55/56; AUC: step 2 means .46875 .1875 0 -.21875 -> 3/4,
  so (3/4 + 1 + 3/4) / 3 = 5/6; overlap step 2: 8 scored tokens, k=2, top |infl| r4t0 r4t1, top
  entropy r5t1 r4t0 -> 1/2; (1/2 + 1/2) / 2 = 1/2.
Run `diverged`: like identity but its responses' token ids differ -> no Spearman; 2 of 3 steps logged.
Run `baseline`: influence off (no influence in the trace).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from small_run import SMALL_INFLUENCE_PRESET

from archer.core.config import compose
from archer.core.run import atomic_write_text
from archer.core.trace import TraceWriter, build_step_table

NAN = float("nan")

INVERSE = {
    1: [
        [0.5, 0.25],
        [0.125, 0.0625],
        [0.375, 0.0],
        [-0.0625, -0.125],
        [1.0, 0.75],
        [0.03125, -0.03125],
        [0.015625, -0.046875],
        [0.0078125, 0.0234375],
    ],
    2: [None, None, None, None, [0.25, 0.125], [0.1875, NAN], [0.0625, -0.0625], [-0.125, -0.09375]],
}
ACCEPTED = {
    1: [True, True, False, False, True, False, False, False],
    2: [None, None, None, None, True, False, True, False],
}
ENTROPY = {
    1: [[2.5, 0.5], [2.0, 0.5], [0.5, 0.5], [0.5, 1.5], [3.0, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],
    2: [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0], [5.0, 5.0], [2.0, 0.5], [1.5, 4.0], [0.5, 0.5], [0.5, 0.5]],
}


def identity_influence() -> dict[int, list]:
    out = {s: [None if r is None else [2 * v for v in r] for r in rows] for s, rows in INVERSE.items()}
    out[2][4] = [0.5, 0.4375]  # above r5t0 (0.375): swaps ranks 5 and 6
    out[2][5] = [0.375, 0.0]
    return out


EXPECTED = {
    "inverse": {"auc": 19 / 24, "top20_overlap": 0.75, "spearman": None, "auc_groups": 3},
    "identity": {"auc": 5 / 6, "top20_overlap": 0.5, "spearman": 55 / 56, "auc_groups": 3},
    "diverged": {"auc": 5 / 6, "top20_overlap": 0.5, "spearman": None, "auc_groups": 3},
    "baseline": {"auc": None, "top20_overlap": None, "spearman": None, "auc_groups": None},
}

SMALL = ["trainer.total_steps=3"]


def response_ids(step: int, row: int, shift: int = 0) -> list[int]:
    return [10 + step + row + shift, 20 + row + shift]


def write_trace(run: Path, influence: dict[int, list] | None, *, shift: int = 0, steps=(1, 2)) -> None:
    with TraceWriter(run / "trace", {"engine": "local", "influence": influence is not None}) as w:
        for step in steps:
            n = 8
            infl = None
            if influence is not None:
                infl = [None if r is None else np.array(r, dtype=np.float32) for r in influence[step]]
            table = build_step_table(
                step,
                uid=[f"p{g}" for g in (0, 0, 0, 0, 1, 1, 1, 1)],
                group_index=[0, 0, 0, 0, 1, 1, 1, 1],
                sample_index=[0, 1, 2, 3, 0, 1, 2, 3],
                prompt_ids=[[1, 2, 3]] * n,
                response_ids=[np.array(response_ids(step, r, shift), dtype=np.int32) for r in range(n)],
                entropy=[np.array(e, dtype=np.float16) for e in ENTROPY[step]],
                reward=np.array([1.0 if a else 0.0 for a in ACCEPTED[step]], dtype=np.float32),
                advantage=np.zeros(n, dtype=np.float32),
                truncated=np.zeros(n, dtype=bool),
                correct=[bool(a) for a in ACCEPTED[step]],
                accepted=ACCEPTED[step] if influence is not None else None,
                influence=infl,
            )
            w.submit(step, table)


def metrics_rows(scale: float, steps: int = 3, influence: bool = True) -> list[dict]:
    """Step 0: validation; steps 1..n with known timings (median = 2·scale) and rewards."""
    rows = [{"step": 0, "val/accuracy": 0.25}]
    step_times = [1.0, 3.0, 2.0]
    rewards = [0.5, 0.75, 0.625]
    for s in range(1, steps + 1):
        r = {
            "step": s,
            "reward/mean": rewards[s - 1],
            "reward/accuracy": rewards[s - 1] / 2,
            "time/step": step_times[s - 1] * scale,
            "time/rollout": 0.5 * scale,
            "time/update": 0.25 * scale,
            "perf/peak_cpu_mem_gb": 1.0 + s,
            "actor/grad_norm": 0.1 * s,
            "actor/pg_loss": -0.5 * s,
        }
        if influence:
            r.update(
                {
                    "time/influence": 0.125 * scale,
                    "influence/groups_selected": float(s),
                    "influence/rows_emitted": float(4 * s),
                    "timing_s/influence_solve": 0.01 * s,
                }
            )
        if s == steps:
            r["val/accuracy"] = 0.5
        rows.append(r)
    return rows


def write_run(
    run: Path,
    overrides: list[str],
    metrics: list[dict],
    influence: dict[int, list] | None,
    *,
    shift: int = 0,
    log: str | None = None,
) -> Path:
    c = compose(SMALL_INFLUENCE_PRESET, [*SMALL, *overrides])
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.yaml", c.to_yaml(resolve=True))
    atomic_write_text(run / "run.json", json.dumps({"preset": c.preset, "overrides": overrides}))
    atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in metrics))
    write_trace(run, influence, shift=shift)
    if log is not None:
        (run / "train.log").write_text(log)
    return run


def write_runs(root: Path) -> Path:
    """root/{baseline,inverse,identity,diverged,crashed}: see the module docstring."""
    write_run(root / "baseline", ["influence.enable=false"], metrics_rows(1.0, influence=False), None)
    write_run(root / "inverse", [], metrics_rows(2.0), INVERSE)
    write_run(root / "identity", ["influence.hessian_mode=identity"], metrics_rows(1.5), identity_influence())
    write_run(
        root / "diverged",
        ["influence.hessian_mode=identity", "seed=1"],
        metrics_rows(1.5, steps=2),
        identity_influence(),
        shift=100,
    )
    crashed = root / "crashed"
    c = compose(SMALL_INFLUENCE_PRESET, [*SMALL, "seed=2"])
    crashed.mkdir(parents=True)
    atomic_write_text(crashed / "config.yaml", c.to_yaml(resolve=True))
    (crashed / "train.log").write_text(
        "warm-up 5/5  loss 4.0\nError: unexpected error: RuntimeError: CUDA error: device-side assert\n"
        "Hint: set ARCHER_DEBUG=1 to see the full traceback, and please report it\n"
    )
    return root
