"""What the demo presets learn, checked on every CI run: a change that breaks learning fails here.

Each test trains a demo preset from a fresh temporary directory and an empty warm-up cache (no
state from earlier runs) on one fixed seed, and asserts the outcome: the training reward and the
held-out accuracy (validation problems never trained on) both rise by a stated margin. A run is
shortened for CI only where the shortened run still shows the learning; the overrides say how.
The full presets' figures over 3 seeds are bench/quickstart_seeds.py's (docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

from archer.core.config import compose
from archer.core.metrics import read_metrics
from archer.core.outcome import outcome_of

# The quickstart (worked arithmetic chains, 4 terms), shortened: the same model, task, warm-up,
# teacher and algorithm, 100 GRPO steps instead of 250 (the learning rate is constant, so these are
# the full run's first 100 steps; held-out accuracy makes most of its rise by then: 0.495 -> 0.705
# at seed 0, reward 0.43 -> 0.58), validated before and after on the 200 held-out chains; one torch
# thread, so a loaded CI machine does not slow it down by thread contention.
QUICKSTART_CI = ["seed=0", "trainer.total_steps=100", "trainer.val_every=100", "trainer.num_threads=1"]


def train(preset: str, tmp_path: Path, overrides: list[str]):
    from archer.core.engines.local.trainer import LocalTrainer

    out = tmp_path / "run"
    c = compose(preset, [*overrides, f"trainer.cache_dir={tmp_path / 'cache'}", "trainer.save_every=0"])
    t = LocalTrainer(c, out)
    try:
        t.setup()
        t.fit()
    finally:
        t.close()
    assert t.warmup.source == "trained"  # no warm-up from an earlier run
    return outcome_of(read_metrics(out), t.first_val, t.last_val)


def test_quickstart_learns_the_task_not_the_training_set(tmp_path):
    o = train("quickstart", tmp_path, QUICKSTART_CI)
    assert o.reward_gain >= 0.08, o
    assert o.val_gain >= 0.10, o  # held-out chains: the model learned to carry, not the answers
