"""What holds for the whole suite; pytest loads this before any test module imports torch."""

from __future__ import annotations

import os

# One OpenMP (torch) thread per process, the tests' and every process they start (`archer train`,
# Ray's workers, spawned ranks), unless the caller set a number: the tests' models are tiny, so a
# second thread mostly spins, and on a loaded 2-core machine the spinning threads of one process
# stall the others'. Side by side at load ~17 (2026-12-07): tests/test_influence*.py 80 tests in
# 58 s (23.5 CPU-s) with one thread; quickstart-verl's 100-step warm-up 0:19 instead of 7:28 and
# arpo-verl-smoke's 1:55 instead of 12:23 (same losses).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The longest test files first (seconds each on a 2-core VM, `pytest --durations` and the helpers' CPU-s,
# 2026-12-08): with the README's `-n 2` the two workers start on them at once and the ~100 short
# files fill in around them, instead of one worker finishing a 5-minute file alone at the end
# (xdist keeps a file on one worker and, with --no-loadscope-reorder, takes files in this order).
LONGEST_FIRST = (
    "test_learning.py",  # ~420 CPU-s: four demo presets trained to a learning outcome
    "test_verl_agent_smoke.py",  # ~140 s each: verl's trainer end to end with Ray
    "test_verl_aepo_smoke.py",
    "test_verl_quickstart.py",
    "test_ablate.py",  # ~25-50 s: real runs killed and resumed
    "test_local_engine.py",
    "test_interrupt_resume.py",
    "test_run_lock.py",
    "test_disk_full.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected
