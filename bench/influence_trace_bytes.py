"""Bytes per token that influence adds to a trace on disk (issue 19, item 4), and the error of
storing the scores.

Reads every step of a run's trace (one written with influence on) and writes it again with
archer's own `TraceWriter` (the current schema, zstd, the default row groups) twice: as it is, and
as an entropy-only run would have written it (the `influence`, `influence_sum`, `influence_mean`
and `accepted` columns null). Same responses, same tokens, so the difference is what influence
costs per token. Then it reads the rewritten scores back and compares them with the input's: on
a schema-v1 trace (float32 scores, as the tracer computed them) that is the storage error of the
current schema (float16 under one power-of-two scale per step: docs/trace-format.md, Precision).

    python bench/influence_trace_bytes.py runs/quickstart-influence
    python bench/influence_trace_bytes.py archer/view/demo      # the shipped demo trace (v1)

Needs numpy and pyarrow only (no torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INFLUENCE_COLUMNS = ("influence", "influence_sum", "influence_mean", "accepted")


def entropy_only(table):
    import pyarrow as pa

    for name in INFLUENCE_COLUMNS:
        i = table.schema.get_field_index(name)
        table = table.set_column(
            i, table.schema.field(i), pa.nulls(table.num_rows, table.schema.field(i).type)
        )
    return table


def storage_error(before, after) -> dict:
    """The scores read back against the input's, step by step (m: the step's largest |score|):
    the largest relative error over |score| >= 2^-29·m (float16's normal range under the step's
    scale), the largest absolute error over m below that, and the responses whose top token by
    |score| is no longer top (a strictly larger stored score elsewhere; ties created by rounding
    keep it top)."""
    import numpy as np

    from archer.core.trace import list_values

    rel, small, responses, moved = 0.0, 0.0, 0, 0
    for a, b in zip(before, after):
        x, off = list_values(a.column("influence"))
        y, yoff = list_values(b.column("influence"))
        x = x[off[0] : off[-1]].astype(np.float64)
        y = y[yoff[0] : yoff[-1]].astype(np.float64)
        assert np.array_equal(off - off[0], yoff - yoff[0]), "the rewritten trace holds other responses"
        ok = np.isfinite(x)
        if not ok.any():
            continue
        m = np.abs(x[ok]).max()
        big = ok & (np.abs(x) >= 2.0**-29 * m)
        err = np.abs(y - x)
        if big.any():
            rel = max(rel, float((err[big] / np.abs(x[big])).max()))
        if (ok & ~big).any():
            small = max(small, float(err[ok & ~big].max() / m))
        off = off - off[0]
        null = np.asarray(a.column("influence").is_null().to_numpy(zero_copy_only=False), dtype=bool)
        for r in range(len(off) - 1):
            xs, ys = np.abs(x[off[r] : off[r + 1]]), np.abs(y[off[r] : off[r + 1]])
            fin = np.isfinite(xs)
            if null[r] or not fin.any():
                continue
            responses += 1
            top = int(np.flatnonzero(fin)[np.argmax(xs[fin])])
            moved += bool(ys[top] < np.nanmax(ys))
    return {
        "storage_max_rel_error": rel,
        "storage_max_abs_error_below_2^-29_of_step_max": small,
        "responses_scored": responses,
        "responses_top_token_changed": moved,
    }


def measure(run: Path) -> dict:
    """The figures this script prints, for the trace of `run`."""
    import numpy as np

    from archer.core.trace import SCHEMA_VERSION, TraceReader, TraceWriter, list_values

    reader = TraceReader(run)
    steps = reader.steps()
    tables = [reader.read_step(s) for s in steps]
    tokens = sum(int(t.column("response_length").to_numpy().sum()) for t in tables)
    scored = 0
    for t in tables:
        vals, _ = list_values(t.column("influence"))
        scored += int(np.isfinite(vals.astype(np.float64)).sum()) if len(vals) else 0
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, fn in (("with_influence", lambda t: t), ("entropy_only", entropy_only)):
            d = Path(tmp) / variant
            with TraceWriter(d, {"engine": "bench"}) as w:
                for s, t in zip(steps, tables):
                    w.submit(s, fn(t))
            sizes[variant] = sum(f.stat().st_size for f in (d / "steps").glob("*.parquet"))
        back = TraceReader(Path(tmp) / "with_influence")
        error = storage_error(tables, [back.read_step(s, columns=["influence"]) for s in steps])
    out = {
        "trace": str(reader.dir),
        "input_schema_versions": sorted(
            {int(reader.schema(s).metadata[b"archer.schema_version"]) for s in steps}
        ),
        "written_schema_version": SCHEMA_VERSION,
        "steps": len(steps),
        "response_tokens": tokens,
        "influence_scored_tokens": scored,
        "bytes_entropy_only": sizes["entropy_only"],
        "bytes_with_influence": sizes["with_influence"],
        "bytes_per_token_entropy_only": round(sizes["entropy_only"] / tokens, 3),
        "bytes_per_token_with_influence": round(sizes["with_influence"] / tokens, 3),
        "extra_pct": round(
            100 * (sizes["with_influence"] - sizes["entropy_only"]) / sizes["entropy_only"], 1
        ),
        "extra_bytes_per_scored_token": round(
            (sizes["with_influence"] - sizes["entropy_only"]) / max(1, scored), 3
        ),
        **error,
    }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory (or trace directory) with influence")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = measure(args.run)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
