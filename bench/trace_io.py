"""Trace I/O benchmark: build, write and read one large synthetic rollout step.

    python bench/trace_io.py [--reps 3] [--no-influence] [--influence-storage auto|float16]
                              [--shape NxL ...] [--out DIR] [--json FILE]

Two shapes: 1024 responses x 4096 tokens (a full-length batch) and 512 responses with lognormal
lengths (mean ~1,865, capped at 8,192, as in docs/trace-format.md). Prints the time to build the
table, to write it through TraceWriter (background thread, zstd-3, row groups of 64), the file
size, the time to read the entropy column, the summary columns, and one response. Synthetic
token ids are nearly incompressible; synthetic entropy has real entropy's mass near zero.
Timings are medians over --reps runs on this machine; compare them only on the same machine.
`--influence-storage` is `trace.influence_storage`: `auto` (the default) stores these long
responses' scores as schema v3's rank codes, `float16` as schema v2 did (docs/trace-format.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from archer.core.trace import TraceReader, TraceWriter, build_step_table


def synthetic_step(n: int, lengths: np.ndarray, influence: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    group = 8
    prompts = [rng.integers(0, 150_000, 512, dtype=np.int32) for _ in range(n // group + 1)]
    ent, infl, resp = [], [], []
    for L in lengths:
        # most tokens are near-certain, a minority are forks: a mixture like real entropy
        e = np.where(rng.random(L) < 0.7, np.abs(rng.normal(0, 0.02, L)), rng.gamma(2.0, 0.8, L))
        ent.append(e.astype(np.float32))
        resp.append(rng.integers(0, 150_000, L, dtype=np.int32))
        if influence:
            x = rng.laplace(0, 1e-3, L).astype(np.float32)
            x[rng.random(L) < 0.1] = np.nan  # tokens outside the captured window
            infl.append(x)
    return dict(
        uid=[f"g{i // group}" for i in range(n)],
        group_index=np.arange(n) // group,
        sample_index=np.arange(n) % group,
        prompt_ids=[prompts[i // group] for i in range(n)],
        response_ids=resp,
        entropy=ent,
        influence=infl if influence else None,
        reward=rng.random(n),
        advantage=rng.normal(size=n),
        truncated=lengths >= lengths.max(),
        correct=rng.random(n) < 0.5,
        data_source="math",
    )


def timed(fn, reps: int):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench(
    name: str, n: int, lengths: np.ndarray, reps: int, influence: bool, root: Path, storage: str = "auto"
) -> dict:
    inputs = synthetic_step(n, lengths, influence)
    t_build, table = timed(lambda: build_step_table(1, **inputs), reps)

    write_times, submit_times = [], []
    for r in range(reps):
        d = root / f"{name}-{r}"
        with TraceWriter(d, {"bench": name}, influence_storage=storage) as w:
            t0 = time.perf_counter()
            w.submit(1, table)
            submit_times.append(time.perf_counter() - t0)
            w.flush()
        write_times.append(w.stats().write_seconds)
    reader = TraceReader(root / f"{name}-0")
    size = reader.step_info(1)["bytes"]

    t_ent, ent = timed(lambda: reader.read_step(1, columns=["entropy"]), reps)
    t_overview, _ = timed(lambda: reader.step_overview(1), reps)
    t_all, _ = timed(lambda: reader.read_step(1), reps)
    t_one, _ = timed(lambda: reader.read_response(1, n // 2), reps * 5)
    t_footer, _ = timed(lambda: reader.num_rows(1), reps * 5)

    tokens = int(lengths.sum())
    raw = table.nbytes
    print(f"\n{name}: {n} responses, {tokens:,} response tokens, Arrow table {raw / 1e6:.1f} MB")
    print(f"  build_step_table          {t_build * 1e3:8.1f} ms")
    print(f"  submit (training waits)   {statistics.median(submit_times) * 1e3:8.1f} ms")
    print(f"  write (background thread) {statistics.median(write_times) * 1e3:8.1f} ms")
    print(f"  file size                 {size / 1e6:8.2f} MB  ({size / tokens:.2f} B/token)")
    print(f"  read entropy column       {t_ent * 1e3:8.1f} ms")
    print(f"  read summary columns      {t_overview * 1e3:8.1f} ms")
    print(f"  read whole step           {t_all * 1e3:8.1f} ms")
    print(f"  read one response         {t_one * 1e3:8.1f} ms")
    print(f"  footer only (num_rows)    {t_footer * 1e3:8.2f} ms")
    return {
        "responses": n,
        "tokens": tokens,
        "build_ms": t_build * 1e3,
        "submit_ms": statistics.median(submit_times) * 1e3,
        "write_ms": statistics.median(write_times) * 1e3,
        "file_mb": size / 1e6,
        "read_entropy_ms": t_ent * 1e3,
        "read_summary_ms": t_overview * 1e3,
        "read_step_ms": t_all * 1e3,
        "read_response_ms": t_one * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-influence", action="store_true", help="leave the influence column null")
    ap.add_argument("--influence-storage", choices=("auto", "float16"), default="auto")
    ap.add_argument("--out", type=Path, default=None, help="keep the files here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here, per shape")
    ap.add_argument(
        "--shape",
        action="append",
        default=None,
        metavar="NxL",
        help="instead of the two shapes: N responses of L tokens each (repeatable), e.g. 1024x64",
    )
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="archer-trace-bench-"))
    influence = not args.no_influence
    try:
        what = f"float32, 10% NaN, stored {args.influence_storage}" if influence else "null"
        print(f"influence column: {what}; files under {root}")
        st = args.influence_storage
        if args.shape:
            results = {}
            for shape in args.shape:
                n, length = (int(v) for v in shape.lower().split("x"))
                name = f"fixed-{n}x{length}"
                results[name] = bench(name, n, np.full(n, length), args.reps, influence, root, st)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2) + "\n")
            return
        fixed = bench("fixed-1024x4096", 1024, np.full(1024, 4096), args.reps, influence, root, st)
        results = {"fixed-1024x4096": fixed}
        rng = np.random.default_rng(1)
        lengths = np.minimum(rng.lognormal(np.log(1865) - 0.5 * 0.8**2, 0.8, 512), 8192).astype(int)
        lengths = np.maximum(lengths, 1)
        results["lognormal-512"] = bench("lognormal-512", 512, lengths, args.reps, influence, root, st)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
