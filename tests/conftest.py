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
