"""The verl tests run verl's real FSDP engine and workers on CPU through a test-only platform shim
(verl_cpu_platform.py); they are skipped, with the reason shown, when the verl extra is missing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# influence_fixtures (the tiny models and batches of archer's influence tests) lives in tests/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Ray 2.60 turns token auth on and writes ~/.ray/auth_token; the tests start private local clusters.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
