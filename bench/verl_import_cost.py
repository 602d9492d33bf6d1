"""What archer's verl plugin adds to `import verl`, in every process that imports verl.

    python bench/verl_import_cost.py [--reps 5] [--repo PATH]

verl loads its plugins (the `verl.plugins` entry points and VERL_USE_EXTERNAL_MODULES) inside
`import verl`, so vLLM servers and their workers, reward and agent-loop workers and TransferQueue
actors all pay for what the plugin imports. Each measurement is a fresh interpreter that runs
`import verl` and reports its wall time and the number of loaded modules:

  - without the plugin: VERL_USE_EXTERNAL_PLUGINS=none, no VERL_USE_EXTERNAL_MODULES;
  - with it: VERL_USE_EXTERNAL_MODULES=archer.core.engines.verl.plugin (the route archer's Ray
    processes get), the plugin's registration checked in the same process.

The two alternate (so a busy machine slows both alike); medians over --reps runs of the wall
time and of the interpreter's CPU time (less sensitive to other load on a shared machine). `--repo` puts
another archer checkout first on PYTHONPATH (e.g. an old commit: `git archive COMMIT | tar -x -C
DIR`). Target: the plugin adds at most 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PLUGIN = "archer.core.engines.verl.plugin"
PROBE = r"""
import json, sys, time
t, c = time.perf_counter(), time.process_time()
import verl
info = {"seconds": time.perf_counter() - t, "cpu": time.process_time() - c, "modules": len(sys.modules)}
if sys.argv[1] == "with":
    from verl.trainer.ppo import core_algos
    info["registered"] = "aspo" in core_algos.POLICY_LOSS_REGISTRY
    info["trainer_stack"] = "verl.workers.engine_workers" in sys.modules
    import archer
    info["archer"] = archer.__file__
print(json.dumps(info))
"""


def measure(mode: str, repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES",)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    if mode == "with":
        env["VERL_USE_EXTERNAL_MODULES"] = PLUGIN
        env["VERL_USE_EXTERNAL_PLUGINS"] = "none"  # one route, so the plugin is imported once
    else:
        env["VERL_USE_EXTERNAL_PLUGINS"] = "none"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env=env,
        cwd=repo,  # `python -c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    measure("without", args.repo)  # warm the file cache once
    for _ in range(args.reps):
        for mode in ("without", "with"):
            runs[mode].append(measure(mode, args.repo))
    med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in ("seconds", "cpu")} for m in runs}
    w = runs["with"][0]
    print(f"repo: {args.repo} (archer imported from {w['archer']})  reps: {args.reps}")
    for mode, label in (("without", "without the plugin"), ("with", "with the plugin   ")):
        print(
            f"import verl {label}: wall {med[mode]['seconds']:.2f} s, CPU {med[mode]['cpu']:.2f} s, "
            f"{runs[mode][0]['modules']} modules"
        )
    print(f"  (plugin registered: {w['registered']}, verl's trainer stack imported: {w['trainer_stack']})")
    print(
        f"plugin cost: wall {med['with']['seconds'] - med['without']['seconds']:+.2f} s, "
        f"CPU {med['with']['cpu'] - med['without']['cpu']:+.2f} s, "
        f"{runs['with'][0]['modules'] - runs['without'][0]['modules']:+d} modules (target <= +0.50 s)"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
