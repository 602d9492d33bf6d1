"""Regenerate the demo trace that `archer view --demo` opens, and the README's screenshot of it.

1. Trains `quickstart-arith-influence` switched to the chain task (CHAIN below: `7+5-3+8=` →
   `12-3+8=9+8=17`) for 100 steps in a clean temp run directory with an empty warm-up cache, writing the trace
   only every `--every` steps (and the first).
2. Copies the trace and the run's tokenizer into archer/view/demo/ (the packaged demo run),
   without the machine's paths (the viewer finds the tokenizer next to the trace), and checks
   its size (a few hundred KB at most).
3. Opens the viewer on a copy of it, headless (Textual's Pilot), and saves SVG screenshots to
   docs/viewer-demo.svg: the Group tab of the last step, an accepted and a rejected answer of one
   prompt side by side, their tokens coloured by influence.

    python bench/demo_trace.py                       # train, copy, screenshot
    python bench/demo_trace.py --screenshots-only    # only redo the SVGs from the shipped demo
    python bench/demo_trace.py -- trainer.total_steps=200     # extra overrides after CHAIN

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

# The chain task of docs/data.md ("Worked chains"): 4-term chains of 0..9, a warm-up teacher that
# forgets the first carry of 70% of its chains, GRPO at lr 1e-4 (quickstart-arith-influence's model
# and influence settings otherwise: the shipped demo was made from them before the quickstart became
# the chain task with its own teacher, `warmup.slip=first_step`; regenerating it from
# quickstart-influence would change the viewer's snapshot tests).
CHAIN = [
    "data.synth.task=chain",
    "reward.function=chain",
    "data.synth.terms=4",
    "data.synth.max_operand=9",
    "data.synth.n=2000",
    "data.synth.val_n=200",
    "data.max_prompt_length=16",
    "rollout.max_new_tokens=16",
    "rollout.val.max_prompts=200",
    "warmup.label_noise=0.7",
    "actor.optim.lr=1e-4",
    "trainer.total_steps=100",
    "trainer.val_every=50",
    "trainer.num_threads=1",
]
MAX_BYTES = 400_000
EVERY = 25  # trace steps 1, 25, 50, 75, 100
SCREENSHOTS = {
    # file in docs/ -> (terminal size, keys pressed after opening)
    "viewer-demo.svg": ((110, 26), ("5",)),
}


def train(work: Path, seed: int, every: int, overrides: list[str], cache: Path | None) -> Path:
    run = work / "run"
    preset = "quickstart-arith-influence"
    cmd = [sys.executable, "-m", "archer", "train", "--preset", preset, "--out", str(run)]
    cmd += [f"seed={seed}", f"trainer.cache_dir={cache or work / 'cache'}", f"trace.write_every={every}"]
    cmd += [*CHAIN, *overrides]
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


async def settle(pilot, rounds: int = 12) -> None:
    """Wait until the viewer's workers have finished and their messages are handled."""
    from textual.worker import WorkerCancelled, WorkerState

    for _ in range(rounds):
        await pilot.pause()
        busy = [w for w in pilot.app.workers if w.state in (WorkerState.PENDING, WorkerState.RUNNING)]
        if not busy:
            break
        for w in busy:
            try:
                await w.wait()
            except WorkerCancelled:
                pass
    await pilot.pause()
    await pilot.pause()


async def screenshot(run: Path, size: tuple[int, int], keys: tuple[str, ...]) -> str:
    from archer.view.app import ArcherViewer

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
    ap.add_argument("--cache", type=Path, help="warm-up cache to use (default: an empty one)")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for training (after --)")
    args = ap.parse_args()
    if not args.screenshots_only:
        with tempfile.TemporaryDirectory(prefix="archer-demo-") as tmp:
            run = train(Path(tmp), args.seed, args.every, args.overrides, args.cache)
            size = install(run)
        steps = sorted(p.name for p in (DEMO_DIR / "trace" / "steps").glob("*.parquet"))
        print(f"demo: {len(steps)} steps ({', '.join(steps)}), {size:,} bytes in {DEMO_DIR}")
    screenshots()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
