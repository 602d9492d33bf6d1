"""One step's agent-rollout metrics, one definition for both engines' agent loops.

The local engine's loop (`rollout.AgentRollout`) and verl's (`group.GroupRollout` inside archer's
verl agent-loop worker) both describe their trajectories by origin (initial | branch | fresh), the
tool calls each made as (tool, status), and the branching decisions as (ΔH, branched); this turns
that into the `agent/*` metrics of docs/agentic.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TIMEOUT_STATUSES = ("timeout", "cpu_limit")


def rollout_stats(
    origins: Sequence[str],
    calls: Sequence[Sequence[tuple[str, str]]],
    decisions: Sequence[tuple[float, bool]],
    prompts: int,
    n: int,
    segment_entropies: Sequence[float] = (),
) -> dict[str, float]:
    """`agent/*` metrics of one step: `origins[i]` and `calls[i]` per trajectory, every decision
    as (ΔH, branched), `prompts` groups with a budget of `n` each; `segment_entropies`: the
    (normalised) entropy of every generated segment, the quantity ΔH is made of, so that a run
    shows what its entropy source (the hf replica, vLLM's top-k log-probs, the local decoder) gave."""
    groups = max(1, prompts)
    turns = [len(c) for c in calls]
    flat = [c for cs in calls for c in cs]
    stats: dict[str, float] = {
        "agent/branches": float(sum(o == "branch" for o in origins)),
        "agent/fresh_rollouts": float(sum(o == "fresh" for o in origins)),
        "agent/initial_rollouts": float(sum(o == "initial" for o in origins)) / groups,
        "agent/trajectories_per_prompt": float(len(origins)) / groups,
        "agent/budget_fill": float(len(origins)) / (groups * max(1, n)),
        "agent/turns_mean": float(np.mean(turns)) if turns else 0.0,
        "agent/tool_calls": float(len(flat)),
        "agent/branch_decisions": float(len(decisions)),
    }
    for tool in ("python", "search"):
        stats[f"agent/calls_{tool}"] = float(sum(c[0] == tool for c in flat))
    stats["agent/tool_errors"] = float(
        sum(c[1] not in ("ok", "pending") and c[1] not in TIMEOUT_STATUSES for c in flat)
    )
    stats["agent/tool_timeouts"] = float(sum(c[1] in TIMEOUT_STATUSES for c in flat))
    if decisions:
        deltas = [float(d[0]) for d in decisions]
        stats["agent/entropy_delta_mean"] = float(np.mean(deltas))
        stats["agent/entropy_delta_max"] = float(np.max(deltas))
        stats["agent/entropy_delta_min"] = float(np.min(deltas))
        stats["agent/branch_rate"] = float(np.mean([bool(d[1]) for d in decisions]))
    if len(segment_entropies):
        stats["agent/segment_entropy_mean"] = float(np.mean(segment_entropies))
        stats["agent/segment_entropy_max"] = float(np.max(segment_entropies))
    return stats
