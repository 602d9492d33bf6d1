"""`archer eval` end to end: resolve the model and data, sample K responses per problem in
batches (each batch saved as one shard), grade them, and summarise avg@K and pass@k.

Resumable by construction: the shards already on disk say which problems are done, and every
batch draws from a seed fixed by (seed, first problem of the batch), so a restarted run with the
same batch size redraws exactly what an uninterrupted run would have drawn. `regrade` re-scores
saved samples with a (possibly different) reward function without loading a model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.core.evaluation.passk import parse_ks
from archer.core.evaluation.results import json_ready, summarize, table_rows
from archer.core.evaluation.samplers import ENGINES, Completion, Sampler, batch_seed, require_vllm
from archer.core.evaluation.samples import (
    FORMAT,
    RESULTS_FILE,
    SAMPLES_DIR,
    SPEC_FILE,
    VERSION,
    Store,
    check_same_sampling,
    finished_problems,
    now,
    open_store,
)
from archer.errors import ArcherError, DataError, UsageError

DEFAULT_MAX_NEW_TOKENS = 1024


@dataclass
class Problem:
    """One evaluation problem: `pid` is its position in the evaluated data (the shards' key)."""

    pid: int
    index: int
    data_source: str
    prompt_text: str
    prompt_ids: list[int]
    answer: str


@dataclass
class EvalOptions:
    """What `archer eval` was asked; None means "from the run's config, else the default"."""

    model: str
    data: list[str] = field(default_factory=list)
    out: Path | None = None
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = None
    engine: str = "local"
    reward: str | None = None
    batch_size: int = 16
    ks: str | None = None
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    limit: int | None = None
    tokenizer: str | None = None
    prompt_key: str | None = None
    answer_key: str | None = None
    apply_chat_template: bool | None = None
    timeout_s: float | None = None
    overwrite: bool = False
    trust_remote_code: bool = False


@dataclass
class EvalResult:
    out: Path
    spec: dict[str, Any]
    summary: dict[str, dict[str, Any]]
    results: dict[str, Any]
    sampled_now: int = 0
    resumed: int = 0
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- sampling and grading


def sample_and_grade(
    sampler: Sampler,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[str],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    reward_fn: str,
    timeout_s: float,
    seed: int | None = None,
) -> list[list[tuple[Completion, Any]]]:
    """K completions per prompt and their `Score`s, graded in one batch (shared with training's
    validation)."""
    from archer.core.rewards import score_batch

    completions = sampler.sample(
        prompts, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    flat = [(g, c) for g, cs in enumerate(completions) for c in cs]
    scores = score_batch(
        reward_fn, [c.text for _, c in flat], [answers[g] for g, _ in flat], timeout_s=timeout_s
    )
    out: list[list[tuple[Completion, Any]]] = [[] for _ in prompts]
    for (g, c), s in zip(flat, scores):
        out[g].append((c, s))
    return out


def sample_rows(
    problem: Problem, graded: Sequence[tuple[Completion, Any]], reward_fn: str
) -> list[dict[str, Any]]:
    return [
        {
            "problem": problem.pid,
            "index": problem.index,
            "data_source": problem.data_source,
            "prompt": problem.prompt_text,
            "answer": problem.answer,
            "sample": i,
            "response": c.text,
            "response_ids": c.token_ids,
            "response_length": len(c.token_ids),
            "truncated": c.truncated,
            "reward": float(s.reward),
            "correct": bool(s.correct),
            "extracted": s.extracted,
            "grade_error": s.error,
            "reward_fn": reward_fn,
        }
        for i, (c, s) in enumerate(graded)
    ]


# --------------------------------------------------------------------------- progress


class TaskProgress:
    """Progress of a long task over `total` units (`start`, `advance`, `stop`). This default says
    nothing; `archer.cli.progress.ConsoleTaskProgress` draws it (core never prints)."""

    def start(self, total: int, done: int, *, label: str, unit: str) -> None:
        """The task starts with `done` of `total` units already done (resumed)."""

    def advance(self, k: int, stats: str) -> None:
        """`k` more units are done; `stats` is a short status text."""

    def stop(self) -> None:
        """The task ended (finished, interrupted or failed)."""


@contextmanager
def _running(progress: TaskProgress | None, total: int, done: int, *, label: str, unit: str):
    p = progress or TaskProgress()
    p.start(total, done, label=label, unit=unit)
    try:
        yield p
    finally:
        p.stop()


# --------------------------------------------------------------------------- resolving inputs


def _run_defaults(run_cfg: dict[str, Any] | None, run_dir: Path | None) -> dict[str, Any]:
    """Data, reward and lengths from a training run's config.yaml, where `--model` is a run."""
    if not run_cfg:
        return {}
    data, reward, rollout = (
        run_cfg.get("data") or {},
        run_cfg.get("reward") or {},
        run_cfg.get("rollout") or {},
    )
    out: dict[str, Any] = {}
    val = list(data.get("val_files") or [])
    if (
        not val
        and not data.get("train_files")
        and run_dir is not None
        and (run_dir / "data" / "val.parquet").is_file()
    ):
        val = [str(run_dir / "data" / "val.parquet")]  # the synthetic task the run wrote for itself
    if val:
        out["data"] = val
    for key, src, name in (
        ("reward", reward, "function"),
        ("timeout_s", reward, "timeout_s"),
        ("max_new_tokens", rollout, "max_new_tokens"),
        ("prompt_key", data, "prompt_key"),
        ("answer_key", data, "answer_key"),
        ("apply_chat_template", data, "apply_chat_template"),
    ):
        if src.get(name) is not None:
            out[key] = src[name]
    return out


def load_problems(
    files: Sequence[str],
    tokenizer: Any,
    *,
    prompt_key: str,
    answer_key: str,
    apply_chat_template: bool,
    limit: int | None,
) -> list[Problem]:
    from archer.core.data.loading import load_prompts
    from archer.core.rollout.prompts import encode_prompt

    records = load_prompts(list(files), prompt_key=prompt_key, answer_key=answer_key)
    if limit is not None:
        records = records[:limit]
    problems = []
    for pid, r in enumerate(records):
        ids = encode_prompt(tokenizer, r.prompt, apply_chat_template)
        if not ids:
            raise DataError(
                f"problem {pid} ({r.data_source} #{r.index}) tokenizes to nothing",
                hint="check the prompt column and the tokenizer",
            )
        text = tokenizer.decode(ids, skip_special_tokens=False)
        problems.append(Problem(pid, int(r.index), r.data_source, text, ids, str(r.answer)))
    if not problems:
        raise DataError(f"no problems in {', '.join(files)}", hint="check --data (and --limit)")
    return problems


def _pick_device(name: str) -> Any:
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}", hint="use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ArcherError("--device cuda but no CUDA GPU is visible", hint="use --device cpu or auto")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def sampling_tag(spec: dict[str, Any], *, explicit_length: bool) -> str:
    """The part of a default folder name that says how the samples were drawn: n and temperature
    always, every other setting that changes the samples when it differs from the default
    (top_p, seed, engine, dtype, a --max-new-tokens given on the command line), so two commands
    that draw different samples never share a default folder."""
    parts = [f"n{spec['n']}", f"t{float(spec['temperature']):g}"]
    if float(spec["top_p"]) != 1.0:
        parts.append(f"p{float(spec['top_p']):g}")
    if int(spec["seed"]) != 0:
        parts.append(f"s{spec['seed']}")
    if spec["engine"] != "local":
        parts.append(str(spec["engine"]))
    if spec["dtype"] != "auto":
        parts.append(str(spec["dtype"]))
    if explicit_length:
        parts.append(f"len{spec['max_new_tokens']}")
    return "-".join(parts)


def default_out(ckpt: Any, data: Sequence[str], tag: str = "") -> Path:
    """<run>/eval/<checkpoint>-<data>-<tag> for a run or checkpoint, ./eval/<model>-<data>-<tag>
    otherwise; several data files join their stems with '+' (a hash past 40 characters)."""
    stems = [Path(d).stem for d in data] or ["data"]
    stem = "+".join(stems)
    if len(stem) > 40:
        import hashlib

        digest = hashlib.sha1("\n".join(str(Path(d).resolve()) for d in data).encode()).hexdigest()[:8]
        stem = f"{stems[0]}+{len(stems) - 1}-{digest}"
    name = f"{stem}-{tag}" if tag else stem
    if ckpt.run_dir is not None:
        head = ckpt.path.name if ckpt.kind == "local" else f"step_{ckpt.step}"
        return ckpt.run_dir / "eval" / f"{head}-{name}"
    return Path("eval") / f"{ckpt.path.name}-{name}"


def _prepare_out(out: Path, spec: dict[str, Any], overwrite: bool, *, defaulted: bool = False) -> Store:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory", hint="choose another --out")
    if (out / SPEC_FILE).is_file():
        old = open_store(out).spec
        if overwrite:
            shutil.rmtree(out / SAMPLES_DIR, ignore_errors=True)
            (out / RESULTS_FILE).unlink(missing_ok=True)
        else:
            check_same_sampling(old, spec, out, defaulted=defaulted)
            if old.get("reward") != spec["reward"]:
                raise UsageError(
                    f"the samples in {out} were graded with reward {old.get('reward')!r}, not "
                    f"{spec['reward']!r}",
                    hint=(
                        f"re-grade them without sampling: archer eval --regrade {out} --reward "
                        f"{spec['reward']}"
                    ),
                )
            spec["created"] = old.get("created", spec["created"])
    elif out.is_dir() and any(out.iterdir()):
        raise UsageError(
            f"--out {out} is not empty and holds no evaluation", hint="choose a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out, spec)
    store.write_spec()
    store.clean_temps()
    return store


# --------------------------------------------------------------------------- the command


def run_eval(
    opts: EvalOptions, *, progress: TaskProgress | None = None, note: Callable[[str], None] | None = None
) -> EvalResult:
    """Sample what is missing, grade it, write results.json; returns the summary.

    `note` receives one-line remarks as they arise (what was resolved, resuming, warnings)."""
    from archer.core.export.checkpoints import find_checkpoint, load_tokenizer, read_run_config
    from archer.core.rewards import REWARD_FUNCTIONS

    if opts.engine not in ENGINES:
        raise UsageError(f"unknown engine {opts.engine!r}", hint="use --engine local or --engine vllm")
    if opts.engine == "vllm":
        require_vllm()
    if opts.n < 1:
        raise UsageError(f"--n must be >= 1 (got {opts.n})")
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1 (got {opts.batch_size})")
    if opts.temperature < 0 or not 0 < opts.top_p <= 1:
        raise UsageError("--temperature must be >= 0 and --top-p in (0, 1]")
    if opts.limit is not None and opts.limit < 1:
        raise UsageError(f"--limit must be >= 1 (got {opts.limit})")
    ks = parse_ks(opts.ks, opts.n)

    ckpt = find_checkpoint(opts.model)
    if ckpt.kind == "verl":
        raise UsageError(
            f"{opts.model} is a verl FSDP checkpoint (sharded weights); export it to a model folder first",
            hint=f"archer export {opts.model} --out DIR, then archer eval --model DIR",
        )
    notes: list[str] = []

    def say(text: str) -> None:
        notes.append(text)
        if note is not None:
            note(text)

    say(f"model: {ckpt.describe()}")
    run_defaults = _run_defaults(read_run_config(ckpt.run_dir), ckpt.run_dir)
    taken = [
        k
        for k in ("data", "reward", "max_new_tokens")
        if getattr(opts, k) in (None, []) and k in run_defaults
    ]
    if taken:
        say(f"from the run's config.yaml: {', '.join(taken)}")

    def pick(name: str, default: Any) -> Any:
        value = getattr(opts, name)
        if value is None or value == []:
            return run_defaults.get(name, default)
        return value

    data = list(pick("data", []))
    if not data:
        raise UsageError(
            "missing --data", hint="pass --data FILE (parquet or jsonl with prompt and answer columns)"
        )
    reward = pick("reward", "math")
    if reward not in REWARD_FUNCTIONS:
        raise UsageError(
            f"unknown reward function {reward!r}", hint=f"use one of: {', '.join(REWARD_FUNCTIONS)}"
        )
    max_new_tokens = int(pick("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1 (got {max_new_tokens})")
    timeout_s = float(pick("timeout_s", 5.0))
    chat = bool(pick("apply_chat_template", True))
    prompt_key = str(pick("prompt_key", "prompt"))
    answer_key = str(pick("answer_key", "reward_model.ground_truth"))
    if opts.temperature == 0 and opts.n > 1:
        say(f"temperature 0 is greedy: all {opts.n} samples of a problem are the same response")

    tok_dir = Path(opts.tokenizer).expanduser() if opts.tokenizer else ckpt.path
    tokenizer = load_tokenizer(tok_dir, trust_remote_code=opts.trust_remote_code)
    problems = load_problems(
        data,
        tokenizer,
        prompt_key=prompt_key,
        answer_key=answer_key,
        apply_chat_template=chat,
        limit=opts.limit,
    )

    from archer import __version__

    spec: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": str(ckpt.path.resolve()),
        "checkpoint": {
            "kind": ckpt.kind,
            "step": ckpt.step,
            "run_dir": str(ckpt.run_dir) if ckpt.run_dir else None,
        },
        "tokenizer": str(tok_dir.resolve()),
        "data": [str(Path(d).resolve()) for d in data],
        "prompt_key": prompt_key,
        "answer_key": answer_key,
        "apply_chat_template": chat,
        "problems": len(problems),
        "limit": opts.limit,
        "engine": opts.engine,
        "dtype": opts.dtype,
        "n": opts.n,
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "max_new_tokens": max_new_tokens,
        "seed": opts.seed,
        "reward": reward,
        "timeout_s": timeout_s,
        "ks": ks,
        "batch_size": opts.batch_size,
        "archer_version": __version__,
        "created": now(),
    }
    defaulted = opts.out is None
    tag = sampling_tag(spec, explicit_length=opts.max_new_tokens is not None)
    out = default_out(ckpt, data, tag) if defaulted else Path(opts.out).expanduser()
    if defaulted:
        say(f"output folder: {out} (--out to choose another)")
    store = _prepare_out(out, spec, opts.overwrite, defaulted=defaulted)
    done = finished_problems(store.read(), opts.n, problems, out)
    todo = [p for p in problems if p.pid not in done.problems]
    if done.problems and not todo:
        say(
            f"all {len(problems)} problems are already sampled in {out}; results recomputed from those "
            "samples"
        )
    elif done.problems:
        say(f"resuming: {len(done.problems)} of {len(problems)} problems already sampled in {out}")

    sampled = 0
    if todo:
        sampler = _make_sampler(opts, ckpt.path, tok_dir, tokenizer, problems, max_new_tokens, say)
        correct = total = 0
        with _running(progress, len(problems), len(done.problems), label="eval", unit="problems") as bar:
            try:
                for start in range(0, len(todo), opts.batch_size):
                    batch = todo[start : start + opts.batch_size]
                    graded = sample_and_grade(
                        sampler,
                        [p.prompt_ids for p in batch],
                        [p.answer for p in batch],
                        n=opts.n,
                        temperature=opts.temperature,
                        top_p=opts.top_p,
                        max_new_tokens=max_new_tokens,
                        reward_fn=reward,
                        timeout_s=timeout_s,
                        seed=batch_seed(opts.seed, batch[0].pid),
                    )
                    rows = [r for p, g in zip(batch, graded) for r in sample_rows(p, g, reward)]
                    store.write_shard(batch[0].pid, rows)
                    sampled += len(batch)
                    correct += sum(r["correct"] for r in rows)
                    total += len(rows)
                    bar.advance(len(batch), f"accuracy so far {correct / total:.3f}")
            except KeyboardInterrupt:
                raise ArcherError(
                    f"evaluation interrupted after {len(done.problems) + sampled} of {len(problems)} "
                    "problems",
                    hint="run the same command again to continue; finished batches are kept",
                ) from None
    result = finalize(store, ks=ks)
    result.sampled_now, result.resumed, result.notes = sampled, len(done.problems), notes
    return result


def _make_sampler(
    opts: EvalOptions,
    model_dir: Path,
    tok_dir: Path,
    tokenizer: Any,
    problems: Sequence[Problem],
    max_new_tokens: int,
    say: Callable[[str], None],
) -> Sampler:
    longest = max(len(p.prompt_ids) for p in problems)
    if opts.engine == "vllm":
        from archer.core.evaluation.samplers import VLLMSampler

        # a context just long enough for this evaluation keeps vLLM's KV cache small on long-context models
        needed = longest + max_new_tokens
        try:
            limit = int(
                json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings") or 0
            )
        except (OSError, ValueError, TypeError):
            limit = 0
        return VLLMSampler(
            model_dir,
            tok_dir,
            dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(opts.dtype, "auto"),
            seed=opts.seed,
            max_model_len=min(needed, limit) if limit else needed,
            trust_remote_code=opts.trust_remote_code,
        )
    from archer.core.evaluation.samplers import LocalSampler
    from archer.core.export.checkpoints import load_model

    device = _pick_device(opts.device)
    model = load_model(model_dir, dtype=opts.dtype, device=device, trust_remote_code=opts.trust_remote_code)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and longest + max_new_tokens > limit:
        say(
            f"the longest prompt ({longest} tokens) plus --max-new-tokens {max_new_tokens} exceeds the "
            f"model's max_position_embeddings ({limit})"
        )
    return LocalSampler(model, tokenizer, device=device)


def finalize(store: Store, *, ks: Sequence[int]) -> EvalResult:
    """Recompute the metrics from every saved sample and write results.json."""
    from archer.core.run import atomic_write_text

    spec = store.spec
    n = int(spec["n"])
    table = store.read()
    summary = summarize(table_rows(table), n=n, ks=ks)
    sampled = len(set(table.column("problem").to_pylist())) if table.num_rows else 0
    reward_fns = sorted(set(table.column("reward_fn").to_pylist())) if table.num_rows else []
    results = {
        "format": "archer-eval-results",
        "version": VERSION,
        "model": spec["model"],
        "checkpoint": spec.get("checkpoint"),
        "data": spec["data"],
        "engine": spec["engine"],
        "n": n,
        "ks": list(ks),
        "temperature": spec["temperature"],
        "top_p": spec["top_p"],
        "max_new_tokens": spec["max_new_tokens"],
        "seed": spec["seed"],
        "reward": spec["reward"],
        "graded_with": reward_fns,
        "problems": spec["problems"],
        "problems_sampled": sampled,
        "complete": sampled == spec["problems"],
        "overall": summary.get("all", {}),
        "by_data_source": {k: v for k, v in summary.items() if k != "all"},
    }
    results = json_ready(results)
    atomic_write_text(store.root / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    return EvalResult(store.root, spec, summary, results)


def regrade(
    out: Path,
    *,
    reward: str | None = None,
    ks: str | None = None,
    timeout_s: float | None = None,
    progress: TaskProgress | None = None,
) -> EvalResult:
    """Grade saved samples again (another reward function, a fixed grader) and rewrite results.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from archer.core.rewards import REWARD_FUNCTIONS, score_batch

    store = open_store(Path(out))
    spec = store.spec
    reward = reward or spec["reward"]
    if reward not in REWARD_FUNCTIONS:
        raise UsageError(
            f"unknown reward function {reward!r}", hint=f"use one of: {', '.join(REWARD_FUNCTIONS)}"
        )
    timeout_s = float(timeout_s if timeout_s is not None else spec.get("timeout_s", 5.0))
    k_list = parse_ks(ks, int(spec["n"])) if ks else list(spec.get("ks") or parse_ks(None, int(spec["n"])))
    shards = store.shards()
    if not shards:
        raise DataError(f"no samples in {store.samples_dir}", hint="run 'archer eval' with this --out first")
    store.clean_temps()
    new: dict[Path, Any] = {}
    with _running(progress, len(shards), 0, label="regrade", unit="shards") as bar:
        for path in shards:
            t = pq.read_table(path)
            scores = score_batch(
                reward, t.column("response").to_pylist(), t.column("answer").to_pylist(), timeout_s=timeout_s
            )
            cols = {
                "reward": pa.array([float(s.reward) for s in scores], pa.float64()),
                "correct": pa.array([bool(s.correct) for s in scores], pa.bool_()),
                "extracted": pa.array([s.extracted for s in scores], pa.string()),
                "grade_error": pa.array([s.error for s in scores], pa.string()),
                "reward_fn": pa.array([reward] * t.num_rows, pa.string()),
            }
            for name, arr in cols.items():
                t = t.set_column(t.schema.get_field_index(name), name, arr)
            new[path] = t
            bar.advance(1, f"{t.num_rows} samples")
    store.rewrite(new)
    spec.update(reward=reward, timeout_s=timeout_s, ks=k_list, regraded=now())
    store.write_spec()
    return finalize(store, ks=k_list)
