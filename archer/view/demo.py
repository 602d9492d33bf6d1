"""The demo trace shipped with archer, opened by `archer view --demo`.

A real trace made by archer (bench/demo_trace.py regenerates it): a few steps of the chain task
(`7+5-3+8=` worked out as `12-3+8=9+8=17`) with entropy for every token and influence for the
groups that have right and wrong answers, plus the run's character tokenizer. It is laid out as
a run directory (`trace/`, `tokenizer/`), and opened from a copy in a temporary directory so the
installed package is never written to.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: The packaged demo run: trace/ (manifest, summary, step files) and tokenizer/.
DEMO_DIR = Path(__file__).with_name("demo")


def demo_available() -> bool:
    return (DEMO_DIR / "trace" / "manifest.jsonl").is_file() and (DEMO_DIR / "tokenizer").is_dir()


def copy_demo(dest: Path) -> Path:
    """Copy the demo run into `dest`/demo and return that run directory."""
    run = Path(dest) / "demo"
    shutil.copytree(DEMO_DIR, run, ignore=shutil.ignore_patterns("__pycache__"))
    return run


@contextlib.contextmanager
def opened_demo() -> Iterator[Path]:
    """A fresh copy of the demo run for the duration of the block (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="archer-demo-") as tmp:
        yield copy_demo(Path(tmp))
