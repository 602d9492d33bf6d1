"""Regenerate the demo trace that `archer view --demo` opens, and the README's screenshot of it.

1. Trains `quickstart-influence` (the chain task with influence) in a clean temp run directory
   with an empty warm-up cache, writing the trace only every `--every` steps.
2. Copies the trace and the run's tokenizer into archer/view/demo/ (the packaged demo run),
   without the machine's paths (the viewer finds the tokenizer next to the trace), and checks
   its size (a few hundred KB at most).
3. Opens the viewer on a copy of it, headless (Textual's Pilot), and saves SVG screenshots to
   docs/: the responses of the last step and the tokens of one response as an influence heatmap.

    python bench/demo_trace.py                       # train, copy, screenshot
    python bench/demo_trace.py --screenshots-only    # only redo the SVGs from the shipped demo
    python bench/demo_trace.py -- trainer.total_steps=200

The step files are what archer wrote; nothing in them is edited.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archer.view.demo import DEMO_DIR, copy_demo  # noqa: E402

MAX_BYTES = 400_000
EVERY = 100  # trace every 100th step: steps 100, 200, 300 of the 300-step quickstart
SCREENSHOTS = {
    # file in docs/ -> (terminal size, keys pressed after opening)
    "viewer-demo.svg": ((120, 34), ("2",)),
    "viewer-demo-responses.svg": ((120, 34), ()),
}


def train(work: Path, seed: int, every: int, overrides: list[str]) -> Path:
    run = work / "run"
    cmd = [sys.executable, "-m", "archer", "train", "--preset", "quickstart-influence", "--out", str(run)]
    cmd += [f"seed={seed}", f"trainer.cache_dir={work / 'cache'}", f"trace.write_every={every}", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise SystemExit(f"archer train failed (exit {proc.returncode}):\n{tail}")
    return run


def install(run: Path) -> int:
    """Copy <run>/trace and <run>/tokenizer into the package's demo folder; return its bytes."""
    tmp = DEMO_DIR.with_name(".demo.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "trace", tmp / "trace")
    shutil.copytree(run / "tokenizer", tmp / "tokenizer")
    summary_path = tmp / "trace" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.update(run_dir=None, tokenizer_path=None)  # found next to the trace, wherever it is copied
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    if size > MAX_BYTES:
        shutil.rmtree(tmp)
        raise SystemExit(f"the demo would be {size:,} bytes (limit {MAX_BYTES:,}): raise --every")
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    tmp.rename(DEMO_DIR)
    return size


async def screenshot(run: Path, size: tuple[int, int], keys: tuple[str, ...]) -> str:
    from archer.view.app import ArcherViewer

    sys.path.insert(0, str(ROOT))
    from tests.view.conftest import settle

    app = ArcherViewer(run)
    app.animation_level = "none"
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        for k in keys:
            await pilot.press(k)
            await settle(pilot)
        return app.export_screenshot(title="archer view --demo")


def screenshots() -> None:
    with tempfile.TemporaryDirectory(prefix="archer-demo-shot-") as tmp:
        run = copy_demo(Path(tmp))
        for name, (size, keys) in SCREENSHOTS.items():
            svg = asyncio.run(screenshot(run, size, keys))
            svg = svg.replace(str(run), "demo")
            (ROOT / "docs" / name).write_text(svg)
            print(f"wrote docs/{name} ({len(svg):,} bytes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=EVERY, help="trace every k-th step")
    ap.add_argument("--screenshots-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for training (after --)")
    args = ap.parse_args()
    if not args.screenshots_only:
        with tempfile.TemporaryDirectory(prefix="archer-demo-") as tmp:
            run = train(Path(tmp), args.seed, args.every, args.overrides)
            size = install(run)
        steps = sorted(p.name for p in (DEMO_DIR / "trace" / "steps").glob("*.parquet"))
        print(f"demo: {len(steps)} steps ({', '.join(steps)}), {size:,} bytes in {DEMO_DIR}")
    screenshots()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
