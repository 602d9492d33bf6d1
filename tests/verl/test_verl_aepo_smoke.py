"""AEPO through verl's agent loop on this machine's CPUs: `archer train --preset aepo-verl-smoke`
(verl's real trainer, archer's agent-loop worker with AEPO's dynamic rollouts and lock-step counter,
the hf rollout, the sandboxed tools, the `aepo` policy loss) trains 2 steps; its metrics show the
dynamic rollout counts (each prompt's initial count m from its probes, not agent.initial_rollouts),
the lock-step iterations and the counter, every group filled to n.

The run's only limit is a hang guard; it warms the tiny model up from an empty cache."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from own_ray import OwnRay

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

pytestmark = pytest.mark.verl
REPO = Path(__file__).resolve().parents[2]
HANG_S = 1800  # a hang, not a slow machine: the run takes a few minutes on 2 loaded cores
N, PROMPTS = 4, 4  # rollout.n and data.train_batch_size of the preset


def test_aepo_verl_smoke_trains_with_dynamic_rollout_counts_and_lockstep_iterations(tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    own_ray = OwnRay()  # this test's Ray processes only (own_ray.py)
    env = own_ray.env({**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"})
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    args = [
        "train",
        "--preset",
        "aepo-verl-smoke",
        "--out",
        str(run),
        f"trainer.cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "archer", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
        start_new_session=True,  # its own process group: Ray's processes die with it
    )
    try:
        rc = proc.wait(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        own_ray.remove()
    assert rc == 0, log.read_text()[-8000:]

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if r["step"] > 0}
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
