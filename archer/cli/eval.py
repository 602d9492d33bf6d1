"""`archer eval`: avg@K and unbiased pass@k of a model or checkpoint, per data source.

Thin by design: the work lives in `archer.core.evaluation` (imported inside the command, with
torch), this module parses options and prints the result table on stdout; progress and notes go
to stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import typer


class Engine(str, Enum):
    local = "local"
    vllm = "vllm"


class Reward(str, Enum):
    math = "math"
    arithmetic = "arithmetic"


class DType(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


EPILOG = (
    "--model is a run directory (its latest checkpoint; data, reward and lengths default to the run's "
    "config), a checkpoint folder, or a Hugging Face model folder. Samples are saved in --out "
    "(samples/*.parquet, results.json): run the same command again to resume an interrupted evaluation, "
    "or re-grade without sampling with --regrade.\n\n"
    "Examples:\n\n"
    "  archer eval --model runs/quickstart\n\n"
    "  archer eval --model runs/quickstart --n 16 --k 1,4,16 --temperature 1.0\n\n"
    "  archer eval --model /models/qwen-math --data data/aime24.parquet --n 64 --reward math "
    "--max-new-tokens 8192 --engine vllm --out evals/aime24\n\n"
    "  archer eval --regrade evals/aime24 --reward math\n\n"
    "pass@k is the unbiased estimator 1 - C(n-c,k)/C(n,k) averaged over problems; avg@K is the mean "
    "accuracy over all K samples (= pass@1). See docs/eval-export.md."
)


def eval_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Run directory, checkpoint folder or Hugging Face model folder."
    ),
    data: list[str] | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Parquet/jsonl file(s) in verl's layout (default: the run's validation data).",
    ),
    n: int = typer.Option(8, "--n", help="Samples per problem (K)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold."),
    max_new_tokens: int | None = typer.Option(
        None,
        "--max-new-tokens",
        help="Response length limit (default: the run's rollout.max_new_tokens, else 1024).",
    ),
    engine: Engine = typer.Option(
        Engine.local, "--engine", help="local (HF generate, CPU or GPU) or vllm (GPU, needs the vllm extra)."
    ),
    reward: Reward | None = typer.Option(
        None, "--reward", help="Reward function: math or arithmetic (default: the run's, else math)."
    ),
    ks: str | None = typer.Option(
        None, "--k", help="pass@k columns, e.g. 1,4,16 (default: 1,2,4,... up to --n)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Evaluation folder (default: <run>/eval/<checkpoint>-<data>-<sampling>, e.g. "
        "step_000200-val-n8-t1, else ./eval/...; one folder per set of sampling settings).",
    ),
    batch_size: int = typer.Option(
        16, "--batch-size", "-b", help="Problems per batch (one saved shard each)."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Sampling seed (each batch draws from (seed, first problem))."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N problems."),
    dtype: DType = typer.Option(DType.auto, "--dtype", help="auto (the model's), fp32, bf16 or fp16."),
    device: Device = typer.Option(Device.auto, "--device", help="local engine: auto, cpu or cuda."),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="Tokenizer folder, if not beside the model."
    ),
    regrade: Path | None = typer.Option(
        None, "--regrade", help="Re-grade the samples in this evaluation folder (no sampling), then report."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Discard samples already in --out and start over."
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow model code from the folder."
    ),
) -> None:
    """Sample K responses per problem, grade them, and report avg@K and pass@k."""
    from archer.cli._console import err, note, warn
    from archer.cli._console import out as console
    from archer.cli.progress import ConsoleTaskProgress
    from archer.errors import UsageError

    reward_name = reward.value if reward is not None else None
    if regrade is not None:
        given = [
            name
            for name, value in (
                ("--model", model),
                ("--data", data),
                ("--out", out),
                ("--tokenizer", tokenizer),
            )
            if value
        ]
        if given:
            raise UsageError(
                f"--regrade uses the saved samples; {', '.join(given)} cannot be combined with it",
                hint=f"archer eval --regrade {regrade} [--reward NAME] [--k 1,4]",
            )
        from archer.core.evaluation.runner import regrade as run_regrade

        result = run_regrade(regrade, reward=reward_name, ks=ks, progress=ConsoleTaskProgress(err()))
        note(f"re-graded {result.results['problems_sampled']} problems with reward {result.spec['reward']!r}")
    else:
        if model is None:
            raise UsageError("missing --model", hint="for example: archer eval --model runs/quickstart")
        from archer.core.evaluation.runner import EvalOptions, run_eval

        opts = EvalOptions(
            model=model,
            data=list(data or []),
            out=out,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            engine=engine.value,
            reward=reward_name,
            batch_size=batch_size,
            ks=ks,
            seed=seed,
            dtype=dtype.value,
            device=device.value,
            limit=limit,
            tokenizer=str(tokenizer) if tokenizer else None,
            overwrite=overwrite,
            trust_remote_code=trust_remote_code,
        )
        result = run_eval(opts, progress=ConsoleTaskProgress(err()), note=note)
    _print(result, console())
    if not result.results["complete"]:
        warn(
            f"only {result.results['problems_sampled']} of {result.results['problems']} problems are "
            "sampled; "
            "the numbers cover those"
        )
    console().print(f"[dim]samples and results.json in {result.out}[/dim]")


def _print(result: object, console: object) -> None:
    from rich.markup import escape

    r = result.results  # type: ignore[attr-defined]
    spec = result.spec  # type: ignore[attr-defined]
    step = (spec.get("checkpoint") or {}).get("step")
    model = spec["model"] + (f" (step {step})" if step is not None else "")
    console.print(f"[bold]model[/bold]  {escape(model)}")  # type: ignore[attr-defined]
    console.print(f"[bold]data[/bold]   {escape(', '.join(spec['data']))}")  # type: ignore[attr-defined]
    console.print(  # type: ignore[attr-defined]
        f"[bold]sampling[/bold] n={r['n']} temperature={r['temperature']} top_p={r['top_p']} "
        f"max_new_tokens={r['max_new_tokens']} seed={r['seed']} engine={spec['engine']} · reward "
        f"{r['reward']}"
    )
    table = render_table(result.summary, n=int(r["n"]), ks=r["ks"])
    width, crop = None, True
    if not console.is_terminal:  # type: ignore[attr-defined]
        # a pipe or a log file has no width to respect: never crop a column of numbers
        from rich.measure import Measurement

        need = Measurement.get(console, console.options.update_width(1000), table).maximum  # type: ignore[attr-defined]
        width, crop = max(console.width, need), False  # type: ignore[attr-defined]
    console.print(table, width=width, crop=crop)  # type: ignore[attr-defined]


def render_table(
    summary: dict[str, dict[str, Any]], *, n: int, ks: Sequence[int], title: str | None = None
) -> Any:
    """A Rich table: one row per data source, then "all"; rates in %."""
    import math

    from rich import box
    from rich.table import Table

    from archer.core.evaluation.results import ALL

    t = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    names = [s for s in summary if s != ALL] + [ALL]
    t.add_column("source", no_wrap=True, overflow="ellipsis", min_width=min(24, max(len(x) for x in names)))
    t.add_column("problems", min_width=len("problems"), justify="right", no_wrap=True)
    t.add_column(f"avg@{n}", min_width=len(f"avg@{n}"), justify="right", no_wrap=True)
    t.add_column("± se", min_width=len("± se"), justify="right", style="dim", no_wrap=True)
    for k in ks:
        t.add_column(f"pass@{k}", min_width=len(f"pass@{k}"), justify="right", no_wrap=True)
    t.add_column("len", min_width=len("len"), justify="right", no_wrap=True)
    t.add_column("trunc", min_width=len("trunc"), justify="right", no_wrap=True)

    def pct(x: float | None) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"

    for i, name in enumerate(names):
        s = summary[name]
        t.add_row(
            name,
            str(s["problems"]),
            pct(s[f"avg@{n}"]),
            pct(s.get("avg_stderr")),
            *[pct(s.get(f"pass@{k}")) for k in ks],
            f"{s['response_length_mean']:.1f}",
            pct(s["truncated_frac"]),
            end_section=(i == len(names) - 2),
            style="bold" if name == ALL else None,
        )
    t.caption = (
        "rates in %; ± se: standard error of avg over problems; pass@k = mean of 1 - C(n-c,k)/C(n,k); "
        "len: mean response tokens; trunc: share cut at --max-new-tokens"
    )
    t.caption_justify = "left"
    return t
