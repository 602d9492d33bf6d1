"""One verl run's figures for docs/benchmarks.md: the step-time split (generation, old log-prob,
update, influence capture/solve/score), the rollout-vs-actor log-prob difference, and the trace
(responses, entropy for all, finite influence for the traced ones). For an agent run (ARPO/AEPO,
`agent/*` metrics) also the agent metrics per step (branches, tool calls by tool, tool errors, budget
fill, ΔH at the branching decisions, the segment entropies the rule read) and the trace's rows with
tool-result tokens; `--check-agent` exits 3 unless the run made a tool call, a branching decision
and a branch, and its entropy source returned non-zero segment entropies.

    python bench/device/summarize.py RUN_DIR [--check-agent]
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
AGENT_KEYS = (
    "agent/branches",
    "agent/fresh_rollouts",
    "agent/trajectories_per_prompt",
    "agent/budget_fill",
    "agent/tool_calls",
    "agent/calls_python",
    "agent/calls_search",
    "agent/tool_errors",
    "agent/tool_timeouts",
    "agent/branch_decisions",
    "agent/branch_rate",
    "agent/entropy_delta_mean",
    "agent/entropy_delta_min",
    "agent/entropy_delta_max",
    "agent/segment_entropy_mean",
    "agent/segment_entropy_max",
)


def agent_section(steps: list[dict], trace: object) -> list[str]:
    """The agent metrics per step and the trace's tool-result rows; failed checks (empty: none)."""
    from archer.core.trace.schema import ROLE_TOOL_RESULT, TOKEN_ROLE_COLUMN

    total = {k: sum(float(r.get(k, 0.0)) for r in steps) for k in AGENT_KEYS}
    for key in AGENT_KEYS:
        vals = [r[key] for r in steps if key in r]
        if vals:
            print(f"  {key:34s} {' '.join(f'{v:.4g}' for v in vals)}")
    rows = with_result = 0
    for step in trace.steps():
        table = trace.read_step(step)
        if TOKEN_ROLE_COLUMN not in table.column_names:
            continue
        for roles in table.column(TOKEN_ROLE_COLUMN).to_pylist():
            rows += 1
            with_result += ROLE_TOOL_RESULT in (roles or [])
    print(f"  trace token_role: {rows} rows, {with_result} with tool-result tokens")
    failed = []
    if total["agent/tool_calls"] <= 0:
        failed.append("no tool call")
    if total["agent/branch_decisions"] <= 0 or total["agent/branches"] <= 0:
        failed.append("no branching decision or no branch")
    if total["agent/segment_entropy_max"] <= 0:
        failed.append("every segment entropy is 0: the rollout server returned no entropies")
    if with_result <= 0:
        failed.append("no trace row marks tool-result tokens")
    return failed


def main(run: Path, check_agent: bool = False) -> int:
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
    if check_agent or any(k.startswith("agent/") for r in steps for k in r):
        failed = agent_section(steps, trace)
        for f in failed:
            print(f"  CHECK FAILED: {f}")
        if check_agent and failed:
            return 3
        if check_agent:
            print(
                "  CHECK OK: tool calls, branches, non-zero segment entropies, tool-result rows in the trace"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), check_agent="--check-agent" in sys.argv[2:]))
