"""AEPO through verl's agent loop on this machine's CPUs: `archer train --preset aepo-verl-smoke`
(verl's real trainer, archer's agent-loop worker with AEPO's dynamic rollouts and lock-step counter,
the hf rollout, the sandboxed tools, the `aepo` policy loss) trains 2 steps; its metrics show the
dynamic rollout counts (each prompt's initial count m from its probes, not agent.initial_rollouts),
the lock-step iterations and the counter, every group filled to n.

The run's only limit is a hang guard; it warms the tiny model up from an empty cache."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from own_ray import train_smoke

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

pytestmark = pytest.mark.verl
REPO = Path(__file__).resolve().parents[2]
N, PROMPTS = 4, 4  # rollout.n and data.train_batch_size of the preset


def test_aepo_verl_smoke_trains_with_dynamic_rollout_counts_and_lockstep_iterations(tmp_path):
    run, steps = train_smoke("aepo-verl-smoke", tmp_path, REPO)
    assert sorted(steps) == [1, 2], sorted(steps)
    for r in steps.values():
        assert r["agent/trajectories_per_prompt"] == N and r["agent/budget_fill"] == 1.0, r
        lo, hi = r["agent/dynamic_rollouts_min"], r["agent/dynamic_rollouts_max"]
        assert 1 <= lo <= hi <= N, r
        # the initial rollouts per prompt are the dynamic counts m (their mean), not agent.initial_rollouts
        assert lo <= r["agent/initial_rollouts"] <= hi, r
        assert r["agent/branches"] + r["agent/fresh_rollouts"] == PROMPTS * (N - r["agent/initial_rollouts"])
        assert math.isfinite(r["agent/h_root_mean"]) and math.isfinite(r["agent/h_tool_mean"]), r
        assert r["agent/iterations"] >= 1 and r["agent/consecutive_max"] >= 0, r
    assert sum(r["agent/tool_calls"] for r in steps.values()) >= 1, steps
    print({k: {m: v for m, v in r.items() if m.startswith("agent/")} for k, r in steps.items()})

    from archer.core.trace.reader import TraceReader

    trace = TraceReader(run / "trace")
    assert trace.steps() == [1, 2], trace.steps()
    for step in trace.steps():
        table = trace.read_step(step)
        assert table.num_rows == PROMPTS * N and "token_role" in table.column_names
