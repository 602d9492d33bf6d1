"""Test-only fault injection for the Ray rank tests, loaded in every worker through
VERL_USE_EXTERNAL_MODULES: while the file named by ARCHER_TEST_FAULT_FILE holds this process's
RANK, the influence recorder's forward hook raises (a capture error inside the model's forward on
that rank only, like a layout the positions disagree with). Without the file nothing changes."""

from __future__ import annotations

import os
from pathlib import Path

from archer.influence import capture

_original = capture.InfluenceRecorder._positions_on


def _positions_on(self, device):
    path = os.environ.get("ARCHER_TEST_FAULT_FILE")
    if path and Path(path).is_file() and Path(path).read_text().strip() == os.environ.get("RANK"):
        raise RuntimeError(f"injected capture failure on rank {os.environ.get('RANK')}")
    return _original(self, device)


capture.InfluenceRecorder._positions_on = _positions_on
