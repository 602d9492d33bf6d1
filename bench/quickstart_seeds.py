"""Run a demo preset on several seeds, each from a clean run directory and an empty warm-up cache,
and print the table docs/benchmarks.md records: wall time, training reward and held-out accuracy,
first against last, and whether each seed meets the preset's targets.

    python bench/quickstart_seeds.py                          # quickstart, seeds 0 1 2
    python bench/quickstart_seeds.py --preset arpo-quickstart --seeds 0
    python bench/quickstart_seeds.py --json out.json -- trainer.total_steps=100

Each seed is one `archer train --preset P seed=S --out <tmp>/run trainer.cache_dir=<tmp>/cache`
in a subprocess, timed from start to exit, as a user runs it. Exit status 1 when a seed misses a
target (reward rise, held-out rise, wall time), so the script doubles as a check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archer.core.metrics import read_metrics  # noqa: E402
from archer.core.outcome import outcome_of  # noqa: E402

# The targets of issue 22 (quickstart) and issue 23 (agent quickstarts): reward rise, held-out rise,
# wall seconds on a 2-core CPU.
TARGETS = {
    "quickstart": (0.15, 0.10, 180.0),
    "quickstart-influence": (0.15, 0.10, 300.0),
    "quickstart-arith": (0.15, 0.10, 180.0),
    "arpo-quickstart": (0.10, 0.10, 300.0),
    "aepo-quickstart": (0.10, 0.10, 300.0),
}
# Held-out accuracy the warm-up must reach before RL starts (issue 23: RL learns from a model that
# is right some of the time).
BEFORE_MIN = {"arpo-quickstart": 0.3, "aepo-quickstart": 0.3}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (on a shared machine the wall time
    also counts other jobs' turns; the CPU time does not)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_seed(preset: str, seed: int, overrides: list[str], work: Path) -> dict:
    run_dir, cache = work / f"seed{seed}", work / f"cache{seed}"
    cmd = [
        sys.executable,
        "-m",
        "archer",
        "train",
        "--preset",
        preset,
        "--out",
        str(run_dir),
        f"seed={seed}",
        f"trainer.cache_dir={cache}",
        *overrides,
    ]
    t0, cpu0 = time.monotonic(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds, cpu = time.monotonic() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise SystemExit(f"seed {seed}: archer train failed (exit {proc.returncode}):\n{tail}")
    rows = read_metrics(run_dir)
    vals = [r for r in rows if r.get("val/accuracy") is not None]
    o = outcome_of(rows, vals[0] if vals else {}, vals[-1] if vals else {})
    return {
        "seed": seed,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "reward_first": o.reward_first,
        "reward_last": o.reward_last,
        "val_before": o.val_before,
        "val_after": o.val_after,
        "verdict": o.verdict(),
        "val_curve": [[r["step"], r["val/accuracy"]] for r in vals],
        **warmup_figures(run_dir),
        **agent_figures(rows),
    }


def warmup_figures(run_dir: Path) -> dict:
    """The warm-up's own figures (steps run, probe accuracy at its stop), from the note it leaves in
    `<run>/warmup/.complete` (a dict's repr); empty when the preset has no warm-up."""
    import ast

    try:
        stats = ast.literal_eval((run_dir / "warmup" / ".complete").read_text().strip())
    except (OSError, ValueError, SyntaxError):
        return {}
    return {k.replace("warmup/", "warmup_"): v for k, v in stats.items()}


# Agent-mode figures (empty for presets without tools): what the branching and the tools did over
# the run, and AEPO's components where they ran (dynamic initial rollouts, clipped tokens whose
# gradient the balanced clip kept).
AGENT_SUMS = {
    "branches": "agent/branches",
    "calls_python": "agent/calls_python",
    "calls_search": "agent/calls_search",
    "tool_errors": "agent/tool_errors",
}
AGENT_RANGES = {"initial_rollouts": "agent/initial_rollouts", "kept_grad_frac": "actor/pg_clipfrac_kept_grad"}


def agent_figures(rows: list[dict]) -> dict:
    steps = [r for r in rows if r.get("agent/tool_calls") is not None]
    if not steps:
        return {}
    out: dict = {k: sum(r.get(m) or 0 for r in steps) for k, m in AGENT_SUMS.items()}
    out["steps"] = len(steps)
    for k, m in AGENT_RANGES.items():
        vals = [r[m] for r in steps if r.get(m) is not None]
        if vals:
            out[k] = {"min": min(vals), "mean": sum(vals) / len(vals), "max": max(vals)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quickstart")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--keep",
        type=Path,
        help="keep the run directories and caches in this empty folder (default: a temporary one, deleted)",
    )
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides (after --)")
    args = ap.parse_args()
    reward_min, val_min, seconds_max = TARGETS.get(args.preset, (0.0, 0.0, float("inf")))
    before_min = BEFORE_MIN.get(args.preset, 0.0)
    header = {
        "preset": args.preset,
        "commit": commit(),
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "overrides": args.overrides,
    }
    print(f"# {header['preset']} · commit {header['commit']} · {header['machine']} · {header['date']}")
    print("| seed | wall s | CPU s | reward first 5 → last 5 | held-out accuracy before → after | targets |")
    print("|---|---|---|---|---|---|")
    results, ok = [], True
    with tempfile.TemporaryDirectory(prefix="archer-seeds-") as tmp:
        work = args.keep or Path(tmp)
        for seed in args.seeds:
            r = run_seed(args.preset, seed, args.overrides, work)
            rg = (r["reward_last"] or 0) - (r["reward_first"] or 0)
            vg = (r["val_after"] or 0) - (r["val_before"] or 0)
            misses = [
                name
                for name, miss in (
                    (f"reward +{reward_min}", rg < reward_min),
                    (f"held-out +{val_min}", vg < val_min),
                    (f"held-out before ≥ {before_min}", (r["val_before"] or 0) < before_min),
                    (f"≤ {seconds_max:.0f}s", r["seconds"] > seconds_max),
                )
                if miss
            ]
            ok &= not misses
            r["missed"] = misses
            results.append(r)
            print(
                f"| {seed} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
                f"{r['reward_first']:.3f} → {r['reward_last']:.3f} "
                f"({rg:+.3f}) | {r['val_before']:.3f} → {r['val_after']:.3f} ({vg:+.3f}) | "
                f"{'met' if not misses else 'missed: ' + ', '.join(misses)} |",
                flush=True,
            )
            if "branches" in r:
                extra = "".join(
                    f", {k} {v['min']:.3g}–{v['max']:.3g} (mean {v['mean']:.3g})"
                    for k, v in r.items()
                    if k in AGENT_RANGES
                )
                print(
                    f"|   | {r['steps']} steps: {r['branches']:.0f} branches, tool calls python "
                    f"{r['calls_python']:.0f} / search {r['calls_search']:.0f}, {r['tool_errors']:.0f} "
                    f"errors{extra} | | | |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps({**header, "results": results}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
