"""Bytes per token that influence adds to a trace on disk (issue 19, item 4).

Reads every step of a run's trace (one written with influence on) and writes it again with
archer's own `TraceWriter` (zstd, the default row groups) twice: as it is, and as an entropy-only
run would have written it (the `influence`, `influence_sum`, `influence_mean` and `accepted`
columns null). Same responses, same tokens, so the difference is what influence costs per token.

    python bench/influence_trace_bytes.py runs/quickstart-influence

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory (or trace directory) with influence")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import numpy as np

    from archer.core.trace import TraceReader, TraceWriter, list_values

    reader = TraceReader(args.run)
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
    out = {
        "trace": str(reader.dir),
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
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
