"""Viewer speed and memory on big traces: what `archer view` does per keypress, timed without a UI.

    python bench/view_speed.py [--steps 6] [--responses 1024] [--tokens 4096] [--reps 5] [--out DIR]
        [--json FILE]

Writes a synthetic trace with archer's own writer: `--steps` steps of `--responses` responses of
`--tokens` tokens (row 0 of every step is twice as long, 8,192 tokens by default, for the heatmap
figure), with influence (10% NaN). Then measures, as the app does them:

  step switch     TraceReader.step_overview (summary columns only) + ResponseTable + its sorted order,
                  plus the response table's cells; cold (first visit of the step)
  response load   one response's row group (ids, entropy, influence, prompt)
  decode          per-token text of the 8k response with the char tokenizer (done once per response)
  heatmap screen  layout + the strips of one screen (78 x 40 cells, both panes) of the 8k response,
                  fresh (no cached strip), and the per-response styling that precedes it
  top-K           the step's token columns read and reduced to top-K and percentiles
  memory          RSS after visiting every step (table + response + top-K each), with the app's
                  cache sizes; bounded by the caches, not the trace

Timings are medians over --reps on this machine; compare them only on the same machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from archer.core.trace import TraceWriter, build_step_table


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_step(step: int, n: int, length: int, seed: int) -> object:
    rng = np.random.default_rng(seed)
    lengths = np.full(n, length)
    lengths[0] = 2 * length
    group = 8
    prompts = [rng.integers(4, 99, 256, dtype=np.int32) for _ in range(n // group + 1)]
    ent, infl, resp = [], [], []
    for L in lengths:
        ent.append(
            np.where(rng.random(L) < 0.7, np.abs(rng.normal(0, 0.02, L)), rng.gamma(2.0, 0.8, L)).astype(
                np.float32
            )
        )
        resp.append(rng.integers(4, 99, L, dtype=np.int32))  # the char tokenizer's printable ids
        x = rng.laplace(0, 1e-3, L).astype(np.float32)
        x[rng.random(L) < 0.1] = np.nan
        infl.append(x)
    return build_step_table(
        step,
        uid=[f"g{i // group}" for i in range(n)],
        group_index=np.arange(n) // group,
        sample_index=np.arange(n) % group,
        prompt_ids=[prompts[i // group] for i in range(n)],
        response_ids=resp,
        entropy=ent,
        influence=infl,
        reward=rng.random(n).astype(np.float32),
        advantage=rng.normal(size=n).astype(np.float32),
        truncated=lengths >= lengths.max(),
        correct=rng.random(n) < 0.5,
        accepted=rng.random(n) < 0.5,
        data_source="synthetic",
    )


def median_ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--responses", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="keep the trace here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the timings (ms) here")
    args = ap.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="archer-view-bench-"))
    trace = root / "trace"
    try:
        print(
            f"writing {args.steps} steps of {args.responses} x {args.tokens} tokens "
            f"(row 0: {2 * args.tokens}) ..."
        )
        t0 = time.perf_counter()
        with TraceWriter(trace, {"preset": "bench"}) as w:
            for s in range(1, args.steps + 1):
                w.submit(s, synthetic_step(s, args.responses, args.tokens, seed=s))
        on_disk = sum(p.stat().st_size for p in (trace / "steps").glob("*.parquet"))
        print(f"  wrote {on_disk / 2**20:.0f} MB in {time.perf_counter() - t0:.1f} s")
        figures = bench(trace, args)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


def visit_all(trace: Path, steps: list[int]) -> list[tuple[str, str]]:
    """RSS while visiting every step twice as the app does (table, first response, top-K)."""
    from archer.view.model import TraceData

    d = TraceData(trace)
    d.step_stats(steps[0])  # warm up imports and numpy/pyarrow pools before the baseline
    d = TraceData(trace)
    gc.collect()
    rss0 = rss_mb()
    trail = []
    for s in steps + steps:
        d.step_table(s)
        d.response(s, 0)
        d.step_stats(s)
        gc.collect()
        trail.append(rss_mb() - rss0)
    step_mb = sum(d.step_table(s).cols["response_length"].sum() for s in steps[:1]) * (4 + 2 + 4) / 2**20
    return [
        (
            f"RSS growth visiting steps 1..{len(steps)} twice (cache: {d._tables.maxsize} steps)",
            " ".join(f"{x:.0f}" for x in trail) + " MB",
        ),
        ("for scale: one step's token columns decompressed (ids + entropy + influence)", f"{step_mb:.0f} MB"),
    ]


def ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def bench(trace: Path, args: argparse.Namespace) -> dict[str, float]:
    """Print the table; return the timings (median ms) by a short name (--json)."""
    from archer.core.models.tiny import build_char_tokenizer
    from archer.core.trace.decode import HFDecoder
    from archer.view.colors import diverging_scale, finite_range, sequential_scale
    from archer.view.model import TraceData
    from archer.view.widgets.heatmap import HeatmapModel, render_screen
    from archer.view.widgets.tables import response_cells

    steps = list(range(1, args.steps + 1))
    rows: list[tuple[str, str]] = []
    memory = visit_all(trace, steps)

    # step switch: a fresh TraceData per rep, so every read is cold (as the first visit of a step)
    switch, model_only, cells_t = [], [], []
    for rep in range(args.reps):
        d = TraceData(trace)
        step = steps[rep % len(steps)]
        t0 = time.perf_counter()
        table = d.step_table(step)
        order = table.order("row")
        t1 = time.perf_counter()
        cells = [response_cells(table, int(r)) for r in order]
        t2 = time.perf_counter()
        switch.append(t2 - t0)
        model_only.append(t1 - t0)
        cells_t.append(t2 - t1)
        assert len(cells) == args.responses
    sort_t = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        table.order("entropy_mean", True, "accepted", 0.2, None)
        sort_t.append(time.perf_counter() - t0)
    rows += [
        (f"step switch: summary columns + table model ({args.responses} responses)", median_ms(model_only)),
        ("step switch: + the table's cells", median_ms(switch)),
        ("re-sort + filter the response table", median_ms(sort_t)),
    ]

    # one response: its row group
    load = []
    for rep in range(args.reps):
        d = TraceData(trace)
        t0 = time.perf_counter()
        tok = d.response(steps[rep % len(steps)], 0)
        load.append(time.perf_counter() - t0)
    n8k = tok.n
    rows.append((f"load one response ({n8k} tokens, its row group)", median_ms(load)))

    dec = HFDecoder(build_char_tokenizer(), "char")
    dec_t = []
    for _ in range(max(1, args.reps // 2)):
        t0 = time.perf_counter()
        texts = dec.token_texts(tok.ids)
        dec_t.append(time.perf_counter() - t0)
    rows.append((f"decode {n8k} tokens to per-token text (once per response)", median_ms(dec_t)))

    # heatmap: per-response styling, then layout + one screen of strips for both panes
    style_t, screen_t, scroll_t = [], [], []
    for _ in range(args.reps):
        m = HeatmapModel()
        t0 = time.perf_counter()
        m.set_tokens(("bench", 0), texts, tok.entropy, tok.influence, ids_mode=False)
        lo, hi = finite_range(tok.entropy)
        ilo, ihi = finite_range(tok.influence)
        m.set_scales(
            {
                "entropy": sequential_scale(lo, hi, "response"),
                "influence": diverging_scale(max(abs(ilo), abs(ihi)), "response"),
            }
        )
        t1 = time.perf_counter()
        a = render_screen(m, "entropy", 78, 40)
        b = render_screen(m, "influence", 78, 40)
        t2 = time.perf_counter()
        render_screen(m, "entropy", 78, 40, top=m.layout(78).n_lines // 2)
        render_screen(m, "influence", 78, 40, top=m.layout(78).n_lines // 2)
        t3 = time.perf_counter()
        style_t.append(t1 - t0)
        screen_t.append(t2 - t1)
        scroll_t.append(t3 - t2)
        assert len(a) == len(b) == 40
    rows += [
        (
            f"heatmap: cell texts + styles of the {n8k}-token response (once per response/scale)",
            median_ms(style_t),
        ),
        ("heatmap: layout + one screen of strips, both panes (78x40 each)", median_ms(screen_t)),
        ("heatmap: one more screen after a jump (layout cached)", median_ms(scroll_t)),
    ]

    topk = []
    for rep in range(max(1, args.reps // 2)):
        d = TraceData(trace)
        t0 = time.perf_counter()
        d.step_stats(steps[rep % len(steps)])
        topk.append(time.perf_counter() - t0)
    rows.append(
        (
            f"top-K + percentiles of a step ({args.responses * args.tokens + args.tokens:,} tokens)",
            median_ms(topk),
        )
    )

    rows += memory
    figures = {
        "step_switch_model_ms": ms(model_only),
        "step_switch_ms": ms(switch),
        "sort_filter_ms": ms(sort_t),
        "load_response_ms": ms(load),
        "decode_ms": ms(dec_t),
        "heatmap_style_ms": ms(style_t),
        "heatmap_screen_ms": ms(screen_t),
        "heatmap_jump_ms": ms(scroll_t),
        "topk_ms": ms(topk),
    }
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    return figures


if __name__ == "__main__":
    main()
