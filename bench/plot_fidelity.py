"""The fidelity plot of docs/influence.md: how well projected influence ranks tokens like exact
all-linear influence, against how much it stores, per module set — the frontier behind the choice
of default knobs.

One panel per `bench/influence_fidelity.py --out` JSON given: x is the factor bytes the tracer keeps
per captured token (what a setting costs in memory and capture work, a deterministic figure, unlike
the single-run overheads), y is Spearman ρ against exact scores of all decoder linears. Markers: one
series per module set (caps off dashed), the exact scores of a module set as a horizontal line (what
any projection of those modules can reach at best), the ρ = 0.8 goal dotted, the default ringed.

    python bench/plot_fidelity.py bench/results/2026-12-07-cpu-infl2/fid-cpu-rank.json \\
        bench/device/results/2026-12-07-h100-s4/fid-0.5b-rank.json --out docs/influence-fidelity.svg

Needs matplotlib (archer's `test` and `plot` extras). The SVG is written reproducibly (no date, a
fixed hash salt), atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

LABELS = {
    "down4": "last 4 down_proj",
    "last_block": "last block",
    "every4": "every 4th block",
    "all": "all linears",
}
COLORS = {"down4": "tab:blue", "last_block": "tab:orange", "every4": "tab:green", "all": "tab:red"}
DEFAULT = ("down4", 32, "default")  # influence's default knobs (archer/influence/settings.py)
GOAL = 0.8


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if "rows" not in data:
        raise SystemExit(f"{path}: not a bench/influence_fidelity.py JSON (no 'rows')")
    return data


def title_of(data: dict[str, Any]) -> str:
    source = str(data.get("source", ""))
    what = "quickstart model after training (CPU)" if "checkpoint" in source else source.split(",")[0]
    damping = data.get("damping", "dimension")
    return f"{what}\n{data.get('device', '')}, damping={damping}, {data.get('date', '')}"


def panel(ax: Any, data: dict[str, Any]) -> None:
    rows = data["rows"]
    projected = [r for r in rows if r["caps"] != "exact" and r.get("bytes_per_token")]
    for name in LABELS:
        for caps, style in (("default", "-"), ("off", "--")):
            pts = sorted(
                (r["bytes_per_token"], r["rho_all"])
                for r in projected
                if r["set"] == name and r["caps"] == caps
            )
            if pts:
                label = LABELS[name] + ("" if caps == "default" else ", caps off")
                ax.plot(*zip(*pts), style, marker="o", color=COLORS[name], label=label)
        exact = [r for r in rows if r["caps"] == "exact" and r["set"] == name]
        if exact and name != "all":
            ax.axhline(
                exact[0]["rho_all"], color=COLORS[name], lw=0.8, ls="-.", label=f"exact {LABELS[name]}"
            )
    for r in projected:
        if (r["set"], r["factor"], r["caps"]) == DEFAULT:
            ax.plot(
                r["bytes_per_token"], r["rho_all"], "o", ms=14, mfc="none", mec="black", label="default knobs"
            )
    ax.axhline(GOAL, color="gray", ls=":", lw=1, label=f"goal ρ ≥ {GOAL}")
    ax.set_xscale("log")
    ax.set_xlabel("factor bytes per captured token (log)")
    ax.set_ylabel("Spearman ρ vs exact, all decoder linears")
    ax.set_title(title_of(data), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "json", nargs="+", type=Path, help="bench/influence_fidelity.py --out files, one panel each"
    )
    p.add_argument("--out", type=Path, required=True, help="the image (.svg or .png)")
    args = p.parse_args(argv)
    try:
        import matplotlib
    except ImportError:
        print("plot_fidelity.py needs matplotlib: pip install -e '.[plot]'", file=sys.stderr)
        return 1
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "archer"
    import matplotlib.pyplot as plt

    panels = [load(path) for path in args.json]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, data in zip(axes[0], panels):
        panel(ax, data)
    fig.tight_layout()
    fmt = args.out.suffix.lstrip(".") or "svg"
    tmp = args.out.with_name(f".{args.out.name}.tmp.{os.getpid()}")
    try:
        fig.savefig(tmp, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
        os.replace(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
