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

`--coding` measures instead what schema v3's rank codes (long responses: docs/trace-format.md,
Precision) do to the ranking of the scores: responses written through `TraceWriter` and read back,
per response the Spearman of read-back against input scores, the overlap of the top 10 % by
|score|, and how often the top token or the top-5 set by |score| changes (first position wins a
tie, as a stable sort gives). On synthetic heavy-tailed long responses (4096 tokens: Laplace,
Student t with 2 degrees of freedom, lognormal magnitudes with sigma 2, random signs), and with
`--coding RUN...` also on real tracer scores, tiled: each step's scored tokens, response after
response, as one long response. Beside it, the same figures for octave buckets below each
response's largest |score| (7 per sign, the last one open below; decoded at the geometric
midpoint), the design the rank codes replaced, and the entropy of both codes in bits per token
(what parquet's dictionary encoding under zstd costs, within about 0.1 bit).

`--tracer` adds real long responses' scores: archer's tracer at the default influence knobs, in the
real PPO update (learning rate 0), on a random-weight tiny Qwen2 (bench/influence_fidelity.py's
mode ii) with 32 random responses of 256-512 tokens in groups of 8, half of each group rewarded
(needs torch; about 45 s on a 2-core CPU).

    python bench/influence_trace_bytes.py --coding --tracer archer/view/demo /tmp/infl2/qs

Needs numpy and pyarrow only (no torch), except for `--tracer`.
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


# ---------------------------------------------------------------------------- coding fidelity


def octave_codes(x):
    """The alternative design: sign plus octave below the response's largest |score| (levels 0..5,
    level 6 everything further down), decoded at the bucket's geometric midpoint. Returns
    (decoded, codes)."""
    import numpy as np

    a = np.abs(x.astype(np.float64))
    m = np.nanmax(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.minimum(np.floor(np.log2(m / a)), 6)
    mid = np.where(level < 6, level + 0.5, 7.0)  # the open last bucket: one octave below its top
    y = np.sign(x) * m * 2.0**-mid
    codes = np.where(np.isnan(x), 99, np.sign(x) * (level + 1))
    y[x == 0], codes[x == 0] = 0.0, 0
    return y, codes


def ranking_change(x, y) -> dict:
    """Spearman (signed scores), top-10 % overlap by |score|, top-1 / top-5 changed, over the
    captured tokens of one response."""
    import math

    import numpy as np

    from archer.core.collect.quality import spearman

    ok = np.isfinite(x)
    x, y = x[ok].astype(np.float64), y[ok].astype(np.float64)
    ox, oy = np.argsort(-np.abs(x), kind="stable"), np.argsort(-np.abs(y), kind="stable")
    k = max(1, math.ceil(0.1 * len(x)))
    return {
        "spearman": spearman(x, y),
        "top10_overlap": len(np.intersect1d(ox[:k], oy[:k])) / k,
        "top1_changed": bool(ox[0] != oy[0]),
        "top5_changed": set(ox[:5].tolist()) != set(oy[:5].tolist()),
    }


def code_entropy_bits(codes) -> float:
    import numpy as np

    _, counts = np.unique(np.concatenate(codes), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def through_trace(responses: list, tmp: Path):
    """The responses written as one step of a v3 trace (`auto`) and read back: (scores read back,
    codes as stored, the step's storage)."""
    import numpy as np
    import pyarrow.parquet as pq

    from archer.core.trace import TraceReader, TraceWriter, build_step_table, list_influence

    n = len(responses)
    table = build_step_table(
        1,
        uid=[f"g{i}" for i in range(n)],
        group_index=np.arange(n),
        sample_index=np.zeros(n, int),
        prompt_ids=[[1, 2, 3]] * n,
        response_ids=[np.zeros(len(x), np.int32) for x in responses],
        entropy=[np.zeros(len(x), np.float32) for x in responses],
        reward=np.zeros(n),
        advantage=np.zeros(n),
        truncated=np.zeros(n, bool),
        influence=responses,
    )
    with TraceWriter(tmp, {"engine": "bench"}) as w:
        w.submit(1, table)
    r = TraceReader(tmp)
    back = r.read_step(1, columns=["influence"])
    disk = pq.read_table(r.step_path(1), columns=["influence"]).column("influence")
    codes = [np.asarray(disk[i].as_py(), dtype=np.float64) for i in range(n)]
    return [list_influence(back, i) for i in range(n)], codes, r.step_info(1).get("influence_storage")


def synthetic_long(kind: str, n: int = 64, length: int = 4096, seed: int = 0) -> list:
    import numpy as np

    rng = np.random.default_rng([seed, len(kind)])
    out = []
    for _ in range(n):
        if kind == "laplace":
            x = rng.laplace(0, 1e-3, length)
        elif kind == "student-t2":
            x = rng.standard_t(2, length) * 1e-4
        else:  # lognormal magnitudes, sigma 2: scores spread over ~10 octaves
            x = np.exp(rng.normal(0, 2, length)) * rng.choice([-1.0, 1.0], length) * 1e-6
        out.append(x.astype(np.float32))
    return out


def tiled_real(run: Path) -> list:
    """Each step's captured scores, response after response, as one long response (float32, as
    stored in the input trace: exact for a v1 trace)."""
    import numpy as np

    from archer.core.trace import TraceReader, list_values

    reader = TraceReader(run)
    out = []
    for s in reader.steps():
        vals, off = list_values(reader.read_step(s, columns=["influence"]).column("influence"))
        v = vals[off[0] : off[-1]].astype(np.float32)
        v = v[np.isfinite(v)]
        if len(v) >= 64:
            out.append(v)
    return out


def tracer_scores(responses: int = 32, length: int = 512, seed: int = 0) -> list:
    """Scores of archer's tracer at the default knobs (`InfluenceSettings(enable=True)`) for random
    responses of length/2..length tokens on a random-weight tiny Qwen2 (needs torch)."""
    import argparse as _argparse

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from influence_fidelity import Bench, synthetic_rollouts

    from archer.influence.settings import InfluenceSettings

    torch.manual_seed(seed)
    ns = _argparse.Namespace(
        responses=responses, group_size=8, prompt_len=16, response_len=length, seed=seed,
        checkpointing=False, dtype="fp32",
    )  # fmt: skip
    data = synthetic_rollouts("tiny", ns, torch.device("cpu"), torch.float32)
    scores, _, _ = Bench(data, torch.device("cpu"), 8, 0).traced(InfluenceSettings(enable=True))
    return [np.asarray(x, dtype=np.float32) for x in scores if x is not None]


def coding_fidelity(sets: dict) -> dict:
    """Per named set of responses: the ranking figures of rank codes and of octave buckets."""
    import numpy as np

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, responses in sets.items():
            back, codes, storage = through_trace(responses, Path(tmp) / name.replace("/", "_"))
            assert storage == "codes", f"{name}: stored as {storage}, not codes (responses too short?)"
            octave = [octave_codes(x) for x in responses]
            row = {
                "responses": len(responses),
                "mean_tokens": round(float(np.mean([len(x) for x in responses])), 1),
            }
            for label, decoded, cs in (
                ("rank", back, codes),
                ("octave", [y for y, _ in octave], [c for _, c in octave]),
            ):
                per = [ranking_change(x, y) for x, y in zip(responses, decoded)]
                sp = np.array([p["spearman"] for p in per], dtype=float)
                row[label] = {
                    "spearman_median": round(float(np.nanmedian(sp)), 4),
                    "spearman_min": round(float(np.nanmin(sp)), 4),
                    "top10_overlap_mean": round(float(np.mean([p["top10_overlap"] for p in per])), 4),
                    "top1_changed": round(float(np.mean([p["top1_changed"] for p in per])), 4),
                    "top5_changed": round(float(np.mean([p["top5_changed"] for p in per])), 4),
                    "code_bits_per_token": round(code_entropy_bits(cs), 2),
                }
            out[name] = row
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, nargs="*", help="run directories (or trace directories) with influence")
    p.add_argument("--coding", action="store_true", help="ranking fidelity of the v3 rank codes (see above)")
    p.add_argument("--tracer", action="store_true", help="with --coding: also the tracer's scores (torch)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.coding:
        sets = {kind: synthetic_long(kind) for kind in ("laplace", "student-t2", "lognormal")}
        if args.tracer:
            sets["tracer, default knobs, tiny random model"] = tracer_scores()
        for run in args.run:
            sets[f"tiled {run}"] = tiled_real(run)
        res = coding_fidelity(sets)
        if args.json:
            print(json.dumps(res))
            return 0
        for name, row in res.items():
            print(f"{name}: {row['responses']} responses, {row['mean_tokens']} tokens on average")
            for label in ("rank", "octave"):
                f = row[label]
                print(
                    f"  {label:6s} Spearman median {f['spearman_median']:.3f} (min {f['spearman_min']:.3f})"
                    f"  top-10% overlap {f['top10_overlap_mean']:.3f}  top-1 changed {f['top1_changed']:.2f}"
                    f"  top-5 changed {f['top5_changed']:.2f}  {f['code_bits_per_token']:.2f} bits/token"
                )
        return 0
    if len(args.run) != 1:
        p.error("give one run directory (or --coding with any number)")
    out = measure(args.run[0])
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
