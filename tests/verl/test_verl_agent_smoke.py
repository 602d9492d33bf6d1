"""ARPO through verl's agent loop on this machine's CPUs: `archer train --preset arpo-verl-smoke`
(verl's real trainer, archer's agent-loop worker and hf rollout, the sandboxed python and BM25
search tools) trains 2 steps; its metrics show tool calls and branches, every prompt's group is
filled to n, and the trace marks tool-result tokens with their role.

The run's only limit is a hang guard; it warms the tiny model up from an empty cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from own_ray import train_smoke

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

pytestmark = pytest.mark.verl
REPO = Path(__file__).resolve().parents[2]


def test_arpo_verl_smoke_trains_with_tool_calls_branches_and_a_role_marked_trace(tmp_path):
    from archer.core.trace.schema import ROLE_MODEL, ROLE_TOOL_CALL, ROLE_TOOL_RESULT

    run, steps = train_smoke("arpo-verl-smoke", tmp_path, REPO)
    assert sorted(steps) == [1, 2], sorted(steps)
    for r in steps.values():
        assert r["agent/trajectories_per_prompt"] == 4 and r["agent/budget_fill"] == 1.0, r
        assert r["agent/initial_rollouts"] == 1
        assert r["agent/branches"] + r["agent/fresh_rollouts"] == 4 * (4 - 1)  # 4 prompts, each filled
    assert sum(r["agent/tool_calls"] for r in steps.values()) >= 1, steps
    assert sum(r["agent/branches"] for r in steps.values()) >= 1, steps
    assert sum(r["agent/branch_decisions"] for r in steps.values()) >= 1
    assert "agent/entropy_delta_mean" in steps[1] or "agent/entropy_delta_mean" in steps[2]
    # the hf replica's per-token top-k entropies reached the branching rule (the segment entropies)
    assert max(r.get("agent/segment_entropy_max", 0.0) for r in steps.values()) > 0, steps

    from archer.core.trace.reader import TraceReader

    trace = TraceReader(run / "trace")
    assert trace.steps() == [1, 2], trace.steps()
    results = 0
    for step in trace.steps():
        table = trace.read_step(step)
        assert table.num_rows == 4 * 4
        assert "token_role" in table.column_names
        for i in range(table.num_rows):
            roles = np.asarray(table.column("token_role")[i].as_py())
            response = table.column("response_ids")[i].as_py()
            assert len(roles) == len(response)
            assert set(roles.tolist()) <= {ROLE_MODEL, ROLE_TOOL_CALL, ROLE_TOOL_RESULT}
            results += int((roles == ROLE_TOOL_RESULT).sum())
    assert results > 0, "no tool-result token in the trace"
