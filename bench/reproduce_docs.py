"""Re-run every CPU figure of docs/benchmarks.md (and the README's, which point there) and print each
beside its documented value.

    python bench/reproduce_docs.py --list              # the entries, their commands and rough cost
    python bench/reproduce_docs.py --only trace-io     # one entry (repeat --only for more)
    python bench/reproduce_docs.py                     # everything: about an hour on an idle 2-core CPU

Each entry runs one bench script in a subprocess, as a user would (the training entries each from a
clean run directory and an empty warm-up cache, through bench/quickstart_seeds.py), reads the JSON
it writes and compares every figure with the documented one:

- timings and sizes: FLAG when the measurement is more than 15 % away from the documented value (a
  documented range "a–b": outside [0.85·a, 1.15·b]). Timings only mean something on the machine the
  doc names, idle;
- learning outcomes ("before → after"): FLAG when the change has the other sign, or when it meets
  the entry's target (the rise the preset promises) where the documented run did not, or the reverse.

The documented values live in FIGURES below, each as the exact text the doc prints;
tests/test_reproduce_docs.py checks that every one appears in its section of docs/benchmarks.md,
so the table and the doc cannot drift apart silently. Exit status: 0 nothing flagged, 1 something
flagged or an entry failed, 2 bad arguments. An entry whose script needs a package that is not
installed (TRL for the engine comparison) is reported as SKIP, with the install hint.

Not covered yet: the AEPO quickstart's seed 0 (not measured yet), and the figures that need a trained
run first (influence fidelity and trace size: bench/influence_fidelity.py, influence_trace_bytes.py)
or a verl install (bench/verl_import_cost.py); their commands are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
TOLERANCE = 0.15  # relative, for timings and sizes


@dataclass(frozen=True)
class Figure:
    """One documented number: `documented` is the doc's text; `measure` reads it from the JSON."""

    label: str
    documented: str
    kind: str  # "time" (also sizes: compared within TOLERANCE) or "learning" ("a → b")
    measure: Callable[[Any], Any]
    target: float = 0.0  # learning: the rise the preset promises


@dataclass(frozen=True)
class Entry:
    name: str
    section: str  # the docs/benchmarks.md heading the figures are under
    what: str
    cost: str
    command: Callable[[Path], list[str]]  # given the JSON output path
    figures: list[Figure] = field(default_factory=list)
    json_on_stdout: bool = False  # the script prints its JSON instead of writing --json FILE
    needs: str | None = None  # a module the script imports; SKIP when absent
    install_hint: str = ""


def py(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / script), *args]


def seeds_entry(name: str, preset: str, section: str, cost: str, rows: list[tuple[int, str, str]]) -> Entry:
    """A demo preset on the seeds of `rows` (seed, reward "a → b", held-out "a → b")."""
    reward_min, val_min = SEED_TARGETS[preset]
    seeds = [str(s) for s, _, _ in rows]

    def pick(seed: int, a: str, b: str) -> Callable[[Any], tuple[float, float]]:
        def f(out: Any) -> tuple[float, float]:
            (r,) = [r for r in out["results"] if r["seed"] == seed]
            return r[a], r[b]

        return f

    figures: list[Figure] = []
    for seed, reward, val in rows:
        figures += [
            Figure(f"seed {seed}: reward, first 5 steps → last 5", reward, "learning",
                   pick(seed, "reward_first", "reward_last"), reward_min),
            Figure(f"seed {seed}: held-out accuracy before → after", val, "learning",
                   pick(seed, "val_before", "val_after"), val_min),
        ]  # fmt: skip
    return Entry(
        name,
        section,
        f"`archer train --preset {preset}` per seed, clean run dir and cache",
        cost,
        lambda out: py("quickstart_seeds.py", "--preset", preset, "--seeds", *seeds, "--json", str(out)),
        figures,
    )


# The targets bench/quickstart_seeds.py checks (reward rise, held-out rise), repeated here so that
# this file imports nothing of archer (it runs the scripts as a user does).
SEED_TARGETS = {
    "quickstart": (0.15, 0.10),
    "quickstart-arith": (0.15, 0.10),
    "arpo-quickstart": (0.10, 0.10),
    "aepo-quickstart": (0.10, 0.10),
}


def _trace(shape: str, key: str) -> Callable[[Any], float]:
    return lambda out: out[shape][key]


def _key(key: str, scale: float = 1.0) -> Callable[[Any], float]:
    return lambda out: out[key] * scale


FIXED, LOGN = "fixed-1024x4096", "lognormal-512"

ENTRIES: list[Entry] = [
    seeds_entry(
        "quickstart",
        "quickstart",
        "Quickstart (local engine, CPU)",
        "3 runs of about 3 CPU-min each",
        [
            (0, "0.425 → 0.642", "0.410 → 0.685"),
            (1, "0.444 → 0.742", "0.470 → 0.730"),
            (2, "0.452 → 0.741", "0.410 → 0.800"),
        ],
    ),
    seeds_entry(
        "quickstart-arith",
        "quickstart-arith",
        "Quickstart (local engine, CPU)",
        "3 runs of 3-8 min",
        [
            (0, "0.503 → 0.853", "0.340 → 0.640"),
            (1, "0.489 → 0.798", "0.480 → 0.730"),
            (2, "0.492 → 0.730", "0.370 → 0.540"),
        ],
    ),
    seeds_entry(
        "arpo-quickstart",
        "arpo-quickstart",
        "ARPO quickstart (local engine, agent mode, CPU)",
        "3 runs of 4-5 CPU-min each",
        [
            (0, "0.334 → 0.606", "0.328 → 0.473"),
            (1, "0.447 → 0.672", "0.602 → 0.723"),
            (2, "0.394 → 0.706", "0.570 → 0.680"),
        ],
    ),
    seeds_entry(
        "aepo-quickstart",
        "aepo-quickstart",
        "AEPO quickstart (local engine, agent mode, CPU)",
        "3 runs of 4-6 CPU-min each",
        [
            (0, "0.331 → 0.556", "0.328 → 0.430"),
            (1, "0.434 → 0.634", "0.602 → 0.715"),
            (2, "0.466 → 0.709", "0.570 → 0.672"),
        ],
    ),
    Entry(
        "trace-io",
        "Trace I/O",
        "bench/trace_io.py: build, write and read one big step (two shapes)",
        "about 1 min",
        lambda out: py("trace_io.py", "--json", str(out)),
        [
            Figure("1024×4096: build_step_table", "78–112 ms", "time", _trace(FIXED, "build_ms")),
            Figure("1024×4096: write (background thread)", "469 ms", "time", _trace(FIXED, "write_ms")),
            Figure("1024×4096: file size", "21.1 MB", "time", _trace(FIXED, "file_mb")),
            Figure("1024×4096: read the entropy column", "36 ms", "time", _trace(FIXED, "read_entropy_ms")),
            Figure("1024×4096: read the whole step", "118 ms", "time", _trace(FIXED, "read_step_ms")),
            Figure("lognormal 512: build_step_table", "14 ms", "time", _trace(LOGN, "build_ms")),
            Figure("lognormal 512: write (background thread)", "94 ms", "time", _trace(LOGN, "write_ms")),
            Figure("lognormal 512: file size", "4.5 MB", "time", _trace(LOGN, "file_mb")),
            Figure("lognormal 512: read the whole step", "24 ms", "time", _trace(LOGN, "read_step_ms")),
        ],
    ),
    Entry(
        "viewer",
        "Viewer",
        "bench/view_speed.py: what `archer view` does per key press on a 157 MB trace",
        "about 2 min",
        lambda out: py("view_speed.py", "--json", str(out)),
        [
            Figure("step switch incl. the table's cells", "13.1 ms", "time", _key("step_switch_ms")),
            Figure("load one response (8,192 tokens)", "12.7 ms", "time", _key("load_response_ms")),
            Figure("decode 8,192 tokens to text", "20.6 ms", "time", _key("decode_ms")),
            Figure("heatmap: cell texts + styles", "12.9 ms", "time", _key("heatmap_style_ms")),
            Figure("heatmap: layout + one screen, both panes", "5.1 ms", "time", _key("heatmap_screen_ms")),
            Figure("top-K + percentiles of a step", "534 ms", "time", _key("topk_ms")),
        ],
    ),
    Entry(
        "influence-overhead-cpu",
        "Influence overhead",
        "bench/influence_overhead.py: the PPO update with and without the influence tracer (tiny model)",
        "about 1 min",
        lambda out: py("influence_overhead.py", "--json"),
        [
            Figure("update without influence", "59.6 ms", "time", _key("update_s", 1e3)),
            Figure("capture", "1.8 ms", "time", _key("capture_s", 1e3)),
            Figure("capture + scoring / update", "5.6 %", "time", _key("capture_plus_scoring_pct_of_update")),
        ],
        json_on_stdout=True,
    ),
    Entry(
        "local-step-cpu",
        "Local engine step vs TRL GRPOTrainer",
        "bench/local_step.py: a GRPO step of archer's local engine against TRL's GRPOTrainer",
        "about 3 min",
        lambda out: py("local_step.py", "--json"),
        [
            Figure("archer s/step", "0.406", "time", _key("archer_s_per_step")),
            Figure("TRL s/step", "0.444", "time", _key("trl_s_per_step")),
            Figure("archer speed-up", "1.09×", "time", _key("speedup")),
        ],
        json_on_stdout=True,
        needs="trl",
        install_hint="pip install -e '.[bench]' (TRL 1.12.0)",
    ),
]

# ------------------------------------------------------------------------------------- comparing
_NUM = re.compile(r"[-+]?\d+(?:\.\d+)?")


def numbers(text: str) -> list[float]:
    """The numbers a documented figure states: "78–112 ms" → [78, 112]; "0.34 → 0.66" → [0.34, 0.66]."""
    return [float(x) for x in _NUM.findall(text.replace(",", ""))]


def compare(fig: Figure, measured: Any) -> tuple[str, bool]:
    """(what was measured, in the doc's units and form; whether it is flagged)."""
    doc = numbers(fig.documented)
    if fig.kind == "learning":
        first, last = measured
        if first is None or last is None:
            return "no value", True
        d_rise, m_rise = doc[1] - doc[0], last - first
        shown = f"{first:.3f} → {last:.3f} ({m_rise:+.3f})"
        sign_changed = (d_rise > 0) != (m_rise > 0)
        target_changed = (d_rise >= fig.target) != (m_rise >= fig.target)
        return shown, sign_changed or target_changed
    value = float(measured)
    lo, hi = (doc[0], doc[-1]) if len(doc) > 1 else (doc[0], doc[0])
    flagged = not (lo * (1 - TOLERANCE) <= value <= hi * (1 + TOLERANCE))
    digits = max((len(x.split(".")[1]) if "." in x else 0) for x in _NUM.findall(fig.documented))
    unit = _NUM.split(fig.documented)[-1].rstrip("*")  # "13.1 ms" → " ms"; "**1.09×**" → "×"
    return f"{value:.{digits}f}{unit}", flagged


def doc_sections(text: str) -> dict[str, str]:
    """docs/benchmarks.md's `## ` sections by heading."""
    out: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        head, _, body = part.partition("\n")
        out[head.strip()] = body
    return out


# ------------------------------------------------------------------------------------- running
def run_entry(entry: Entry, work: Path) -> tuple[list[tuple[Figure, str, bool]], str | None]:
    """Run one entry's script; returns ([(figure, measured, flagged)], None) or ([], why it did not run)."""
    if entry.needs and importlib.util.find_spec(entry.needs) is None:
        return [], f"SKIP: needs {entry.needs} ({entry.install_hint})"
    out = work / f"{entry.name}.json"
    cmd = entry.command(out)
    print(f"$ {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0 and not out.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return [], f"FAILED (exit {proc.returncode}): " + " | ".join(tail)
    if entry.json_on_stdout:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        data = json.loads(out.read_text())
    rows = []
    for fig in entry.figures:
        shown, flagged = compare(fig, fig.measure(data))
        rows.append((fig, shown, flagged))
    return rows, None


def header() -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    from quickstart_seeds import commit, machine

    line = f"commit {commit()} · {machine()} · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) / 2:
        line += f"\nwarning: load average {load:.1f}: other work shares this machine, timings will be off"
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list the entries and exit")
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this entry")
    args = ap.parse_args(argv)
    names = [e.name for e in ENTRIES]
    unknown = [n for n in args.only if n not in names]
    if unknown:
        print(f"error: unknown entry {unknown[0]!r}; choose from: {', '.join(names)}", file=sys.stderr)
        return 2
    if args.list:
        for e in ENTRIES:
            cmd = " ".join(Path(c).name if i < 2 else c for i, c in enumerate(e.command(Path("OUT.json"))))
            print(f"{e.name:24s} {len(e.figures):2d} figures  {e.cost:18s} {e.what}")
            print(f"{'':24s} section '{e.section}' · python {cmd.split(' ', 1)[1]}")
        return 0
    chosen = [e for e in ENTRIES if not args.only or e.name in args.only]
    print(header())
    flagged_any = False
    with tempfile.TemporaryDirectory(prefix="archer-reproduce-") as tmp:
        for entry in chosen:
            print(f"\n## {entry.name} — {entry.what}")
            rows, why = run_entry(entry, Path(tmp))
            if why:
                print(f"   {why}")
                flagged_any |= why.startswith("FAILED")
                continue
            width = max(len(f.label) for f, _, _ in rows)
            for fig, shown, flagged in rows:
                mark = "FLAG" if flagged else "ok  "
                doc = f"documented {fig.documented:>16s}"
                print(f"   {mark} {fig.label.ljust(width)}  {doc}   measured {shown}")
                flagged_any |= flagged
    print("\nflagged: see FLAG lines above" if flagged_any else "\nno figure flagged")
    return 1 if flagged_any else 0


if __name__ == "__main__":
    raise SystemExit(main())
