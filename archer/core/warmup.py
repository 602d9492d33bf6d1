"""The supervised warm-up: a few hundred steps of teacher forcing on (prompt, answer) pairs, so
RL starts from a model that is right some of the time (tiny models learn nothing from a reward
they never receive). The result is cached by a hash of everything that determines it
(`prepare_warmup` decides whether to train, reuse the run's own, or copy the cached one)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from archer.core.rollout.batch import left_pad

# Modules whose code decides what the warm-up trains on, or how: the synthetic task generators, the
# teacher and the training loop (this module), prompt encoding, the tiny model and its tokenizer;
# in agent mode also the tool protocol, the demonstrations and the tools that produce their results.
# Their source is part of the cache key, so an edit to any of them never reuses an older warm-up.
WARMUP_CODE = (
    "archer.core.data.synth",
    "archer.core.data.chain",
    "archer.core.warmup",
    "archer.core.rollout.prompts",
    "archer.core.models.tiny",
    "archer.core.models.loading",
)
AGENT_CODE = (
    "archer.core.agent.protocol",
    "archer.core.agent.engine",
    "archer.core.tools",
    "archer.core.tools.python_sandbox",
    "archer.core.tools.search",
)


def code_fingerprint(modules: Sequence[str]) -> str:
    """sha256 of the source files of `modules` (found without importing them)."""
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        h.update(name.encode() + b"\0")
        h.update(Path(origin).read_bytes() if origin and Path(origin).is_file() else b"<missing>")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of everything about a tokenizer that changes token ids: its serialised model (vocab,
    merges, pre-tokenizer), special tokens, chat template and padding side."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
    }
    return hashlib.sha256((body + json.dumps(extra, sort_keys=True)).encode()).hexdigest()


def file_fingerprint(paths: Sequence[str]) -> list[str]:
    """sha256 of each file's bytes (a missing file hashes as such; loading reports it later)."""
    out = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            out.append(f"missing:{p}")
            continue
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out.append(h.hexdigest())
    return out


def warmup_key_parts(
    cfg: Any, n_train: int, tokenizer: Any = None, device: torch.device | str | None = None
) -> dict[str, Any]:
    """Everything a warm-up's result depends on, as a JSON-able dict (hashed by `warmup_key`).

    The preset values (model, data, warm-up knobs, seed; the agent's tools in agent mode), the
    training data itself (the bytes of `data.train_files`; for synthetic data, the generator's
    settings and code), the tokenizer, the code of the generators, teacher and loop, and the
    torch/transformers versions and device kind that run it."""
    import transformers

    if tokenizer is None:
        from archer.core.models.loading import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    agent = bool(cfg.agent.enable)
    parts: dict[str, Any] = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": {
            k: data[k]
            for k in (
                "train_files",
                "synth",
                "prompt_key",
                "answer_key",
                "apply_chat_template",
                "max_prompt_length",
            )
        },
        "data_files": file_fingerprint(data["train_files"]),
        "warmup": {k: v for k, v in OmegaConf.to_container(cfg.warmup, resolve=True).items() if k != "cache"},
        "seed": int(cfg.seed),
        "n_train": int(n_train),
        "code": code_fingerprint(WARMUP_CODE + (AGENT_CODE if agent else ())),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        # the kind of device the warm-up runs on (the verl engine picks its own: the GPU when free)
        "device": torch.device(device).type
        if device is not None
        else (
            "cuda"
            if cfg.trainer.device == "cuda" or (cfg.trainer.device == "auto" and torch.cuda.is_available())
            else "cpu"
        ),
        "version": 2,
    }
    if agent:
        # The demonstrations are built by calling the tools (AgentRunner.demonstrations through
        # build_tools, which reads agent.tools only): their settings (output caps, top-k, corpus)
        # change what the warm-up shows; the branching rule (agent.algorithm, agent.aepo, α, β,
        # initial rollouts, max_turns) acts in RL only, so ARPO and AEPO presets share a warm-up.
        parts["agent"] = {"tools": OmegaConf.to_container(cfg.agent.tools, resolve=True)}
        corpus = cfg.agent.tools.search.corpus
        parts["corpus"] = file_fingerprint([corpus]) if corpus else None
    return parts


def warmup_key(
    cfg: Any, n_train: int, tokenizer: Any = None, device: torch.device | str | None = None
) -> str:
    """Cache key of a warm-up: a hash of `warmup_key_parts` (pass the run's tokenizer if loaded)."""
    parts = warmup_key_parts(cfg, n_train, tokenizer, device)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def near_miss(answer: str) -> str:
    """The integer answer plus one: a weak teacher's systematic slip (other answers unchanged)."""
    try:
        return str(int(answer) + 1)
    except ValueError:
        return answer


def teacher_answers(
    tokenizer: Any, prompts: Sequence[Any], chain_slip: str = "carry"
) -> list[tuple[str, str]]:
    """Per prompt, what the warm-up's teacher writes when right and when it slips.

    Worked chains (data_source `chain`): the step-by-step solution, and the same with the slip
    `chain_slip` (warmup.slip: the first carry or borrow forgotten, or the first step one too
    high; archer/core/data/chain.py). Anything else: the answer, and its near miss (integer + 1)."""
    from archer.core.data.chain import DATA_SOURCE as CHAIN
    from archer.core.data.chain import worked_solution

    out = []
    for p in prompts:
        if p.data_source == CHAIN:
            text = tokenizer.decode(p.ids, skip_special_tokens=True)
            out.append((worked_solution(text), worked_solution(text, slip=chain_slip)))
        else:
            out.append((p.answer, near_miss(p.answer)))
    return out


def supervised_batch(
    tokenizer: Any,
    prompts: Sequence[Any],
    answers: Sequence[str] | None = None,
    demos: Sequence[Sequence[tuple[str, int]]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, labels (-100 on prompt and padding) for prompt+answer+EOS.

    With `demos`, row i's response is the concatenation of its (text, role) spans, and spans of
    role 1 (tool results, which the engine appends at rollout time) get label -100 too."""
    eos = int(tokenizer.eos_token_id)
    seqs, label_from, ignore = [], [], []
    for i, p in enumerate(prompts):
        spans = demos[i] if demos is not None else [(answers[i] if answers is not None else p.answer, 0)]
        response, skip = [], []
        for text, role in spans:
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            if role == 1:
                skip.extend(range(len(response), len(response) + len(ids)))
            response += ids
        seqs.append(list(p.ids) + response + [eos])
        label_from.append(len(p.ids))
        ignore.append(skip)
    ids, mask = left_pad(seqs, int(tokenizer.pad_token_id))
    labels = torch.full_like(ids, -100)
    width = ids.shape[1]
    for i, s in enumerate(seqs):
        start = width - len(s) + label_from[i]
        labels[i, start:] = ids[i, start:]
        for j in ignore[i]:
            labels[i, start + j] = -100
    return ids, mask, labels


PROBE_PROMPTS = 64  # training prompts the early-stop probe answers (warmup.target_accuracy)
PROBE_EVERY = 25  # warm-up steps between probes


def teacher_forced_probe(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    device: torch.device | str,
    demos: Sequence[Sequence[tuple[str, int]]] | None = None,
    *,
    slips: bool = False,
    chain_slip: str = "carry",
) -> Callable[[], float]:
    """Greedy decoding's share of `prompts` answered as the teacher answers, without generating:
    a row counts when every trained token (the answer, or a demonstration's call and answer) is the
    model's argmax given the tokens before it, which with deterministic tools is exactly what
    greedy decoding would write. `slips`: the teacher's slip (warmup.label_noise) counts too, so
    the probe measures whether the model does what it was shown (call, copy, answer) rather than
    which of the two answers it was shown more often. One forward pass per answer set."""
    batches = []
    for k in (0, 1) if slips else (0,):
        answers = [pair[k] for pair in teacher_answers(tokenizer, prompts, chain_slip)]
        shown = None
        if demos is not None:
            shown = [[*d[:-1], (a, d[-1][1])] if d else d for d, a in zip(demos, answers)]
        ids, mask, labels = supervised_batch(tokenizer, prompts, answers, shown)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        batches.append(tuple(t.to(device) for t in (ids, mask, pos, labels)))

    def probe() -> float:
        was_training = model.training
        model.eval()
        ok = None
        try:
            with torch.no_grad():
                for ids, mask, pos, labels in batches:
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
                    pred, target = logits[:, :-1].argmax(-1), labels[:, 1:]
                    row = ((pred == target) | (target == -100)).all(-1)
                    ok = row if ok is None else ok | row
        finally:
            model.train(was_training)
        return float(ok.float().mean())

    return probe


def run_warmup(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    wcfg: Any,
    *,
    seed: int,
    device: torch.device | str,
    on_step: Callable[[int, float], None] | None = None,
    probe: Callable[[], float] | None = None,
    demos: Sequence[Sequence[tuple[str, int]]] | None = None,
) -> dict[str, float]:
    """Train in place for `wcfg.steps` steps, or until `probe()` (every PROBE_EVERY steps)
    reaches `wcfg.target_accuracy`.

    `demos[i]` replaces prompt i's answer by a tool-use demonstration (see `supervised_batch`);
    label noise then applies to its last span, the final answer."""
    gen = torch.Generator().manual_seed(seed + 7919)
    opt = torch.optim.AdamW(model.parameters(), lr=wcfg.lr, weight_decay=0.0)
    total = int(wcfg.steps)
    warm = max(1, total // 10)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    targets = teacher_answers(tokenizer, prompts, str(getattr(wcfg, "slip", "carry")))
    model.train()
    loss_value = probe_value = float("nan")
    steps_done = 0
    for step in range(total):
        idx = torch.randint(len(prompts), (wcfg.batch_size,), generator=gen).tolist()
        batch = [prompts[i] for i in idx]
        answers = [targets[i][0] for i in idx]
        if wcfg.label_noise > 0:
            noisy = torch.rand(len(batch), generator=gen) < wcfg.label_noise
            answers = [targets[i][1] if bool(noisy[j]) else targets[i][0] for j, i in enumerate(idx)]
        batch_demos = None
        if demos is not None:
            batch_demos = [list(demos[i]) for i in idx]
            if wcfg.label_noise > 0:
                for d, a in zip(batch_demos, answers):
                    d[-1] = (a, d[-1][1])
        ids, mask, labels = supervised_batch(tokenizer, batch, answers, batch_demos)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=pos.to(device),
            labels=labels.to(device),
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(out.loss.detach())
        steps_done = step + 1
        if on_step is not None:
            on_step(steps_done, loss_value)
        if probe is not None and wcfg.target_accuracy > 0 and steps_done % PROBE_EVERY == 0:
            probe_value = probe()
            if probe_value >= wcfg.target_accuracy:
                break
    model.zero_grad(set_to_none=True)
    out = {"warmup/steps": float(steps_done), "warmup/final_loss": loss_value}
    if probe is not None and wcfg.target_accuracy > 0:
        out["warmup/probe_accuracy"] = probe_value
    return out


def cached_warmup_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"warmup-{key}"


WARMUP_DIR = "warmup"  # <run>/warmup: the weights RL starts from
DONE_MARKER = ".complete"


@dataclass
class WarmupResult:
    """Where RL starts from, and how that folder came to be."""

    path: Path | None  # None: no warm-up (model.path or the tiny model's init)
    source: str  # "off", "run" (this run's own, from an earlier start), "cache" or "trained"
    stats: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def copy_dir(src: Path, dst: Path) -> None:
    """Copy a folder into place through a temporary sibling, so `dst` is whole or absent."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with _temp_removed_on_failure(tmp, dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


@contextlib.contextmanager
def _temp_removed_on_failure(tmp: Path, final: Path) -> Iterator[None]:
    """A failed write leaves no temp folder; a full disk becomes one line naming `final`."""
    from archer.core.storage import disk_full_error

    try:
        yield
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full_error(final, e) if isinstance(e, Exception) else None
        if full is not None and full is not e:
            raise full from e
        raise


def prepare_warmup(
    cfg: Any,
    run_dir: Path,
    cache_dir: Path,
    prompts: Sequence[Any],
    *,
    device: torch.device | str,
    demos: Callable[[], Sequence[Sequence[tuple[str, int]]] | None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> WarmupResult:
    """Run the supervised warm-up into `<run>/warmup`, or reuse this run's or the cache's.

    The cache (`trainer.cache_dir`, keyed by `warmup_key`) holds finished warm-ups only; a folder
    becomes visible there or in the run by a rename, so a crash never leaves half a warm-up. One
    process builds each cache entry (`.warmup-KEY.lock`): another run that needs the same warm-up
    waits for it (`on_wait` names the builder) and then copies it."""
    if not cfg.warmup.enable or cfg.warmup.steps == 0:
        return WarmupResult(None, "off")
    target = Path(run_dir) / WARMUP_DIR
    if (target / DONE_MARKER).exists():
        return WarmupResult(target, "run")
    cached = cached_warmup_path(cache_dir, warmup_key(cfg, len(prompts), device=device))
    if not cfg.warmup.cache:
        return _build(cfg, target, None, prompts, device=device, demos=demos, on_step=on_step)
    from archer.core.runlock import hold_lock

    lock = cached.with_name(f".{cached.name}.lock")  # hidden: not an entry to anything that lists them
    with hold_lock(lock, what=f"warm-up cache entry {cached}", wait=True, on_wait=on_wait):
        if (cached / DONE_MARKER).exists():
            copy_dir(cached, target)
            return WarmupResult(target, "cache")
        return _build(cfg, target, cached, prompts, device=device, demos=demos, on_step=on_step)


def _build(
    cfg: Any,
    target: Path,
    cached: Path | None,
    prompts: Sequence[Any],
    *,
    device: torch.device | str,
    demos: Callable[[], Sequence[Sequence[tuple[str, int]]] | None] | None,
    on_step: Callable[[int, float], None] | None,
) -> WarmupResult:
    from archer.core.models.loading import load_policy

    model, tok = load_policy(cfg)
    model.to(device)
    t0 = time.time()
    shown = demos() if demos is not None else None
    probe = None
    if cfg.warmup.target_accuracy > 0:  # early stop: greedy accuracy on the first training prompts
        k = min(PROBE_PROMPTS, len(prompts))
        probe = teacher_forced_probe(
            model,
            tok,
            prompts[:k],
            device,
            list(shown[:k]) if shown is not None else None,
            slips=cfg.warmup.label_noise > 0,
            chain_slip=str(cfg.warmup.slip),
        )
    stats = run_warmup(
        model,
        tok,
        prompts,
        cfg.warmup,
        seed=int(cfg.seed),
        device=device,
        on_step=on_step,
        probe=probe,
        demos=shown,
    )
    tmp = target.with_name(f".{WARMUP_DIR}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with _temp_removed_on_failure(tmp, target):
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / DONE_MARKER).write_text(f"{stats}\n")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    if cached is not None:
        copy_dir(target, cached)
    return WarmupResult(target, "trained", stats, time.time() - t0)
