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

# The quickstart, shortened: the same model, task, warm-up, teacher and algorithm, 100 GRPO steps
# instead of 500 (held-out accuracy makes most of its rise in the first 100: 0.34 -> 0.64 at seed
# 0 on main 2937de2, 0.66 at 350; the later steps are for the training reward, docs/benchmarks.md),
# validated before and after; one torch thread, so a loaded CI machine does not slow it down by
# thread contention.
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
    assert o.reward_gain >= 0.05, o
    assert o.val_gain >= 0.15, o  # held-out problems: the model learned the task, not the answers
