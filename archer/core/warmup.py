"""The supervised warm-up: a few hundred steps of teacher forcing on (prompt, answer) pairs, so
RL starts from a model that is right some of the time (tiny models learn nothing from a reward
they never receive). The result is cached by a hash of everything that determines it
(`prepare_warmup` decides whether to train, reuse the run's own, or copy the cached one)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from archer.core.rollout.batch import left_pad


def warmup_key(cfg: Any, n_train: int) -> str:
    """Hash of the settings a warm-up depends on (model, tokenizer source, data, warm-up knobs, seed)."""
    parts = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": {
            k: OmegaConf.to_container(cfg.data, resolve=True)[k]
            for k in ("train_files", "synth", "prompt_key", "answer_key", "max_prompt_length")
        },
        "warmup": OmegaConf.to_container(cfg.warmup, resolve=True),
        "seed": int(cfg.seed),
        # tool-use demonstrations depend on the tools' settings (result format, output caps)
        **({"agent": OmegaConf.to_container(cfg.agent, resolve=True)} if cfg.agent.enable else {}),
        "n_train": n_train,
        "version": 1,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def near_miss(answer: str) -> str:
    """The integer answer plus one: a weak teacher's systematic slip (other answers unchanged)."""
    try:
        return str(int(answer) + 1)
    except ValueError:
        return answer


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
    """Train in place for `wcfg.steps` steps (or until `probe()` reaches the target accuracy).

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
    model.train()
    loss_value = float("nan")
    steps_done = 0
    for step in range(total):
        idx = torch.randint(len(prompts), (wcfg.batch_size,), generator=gen).tolist()
        batch = [prompts[i] for i in idx]
        answers = None
        if wcfg.label_noise > 0:
            noisy = torch.rand(len(batch), generator=gen) < wcfg.label_noise
            answers = [near_miss(p.answer) if bool(noisy[i]) else p.answer for i, p in enumerate(batch)]
        batch_demos = None
        if demos is not None:
            batch_demos = [list(demos[i]) for i in idx]
            if answers is not None:
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
        if probe is not None and wcfg.target_accuracy > 0 and steps_done % 25 == 0:
            if probe() >= wcfg.target_accuracy:
                break
    model.zero_grad(set_to_none=True)
    return {"warmup/steps": float(steps_done), "warmup/final_loss": loss_value}


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
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


def prepare_warmup(
    cfg: Any,
    run_dir: Path,
    cache_dir: Path,
    prompts: Sequence[Any],
    *,
    device: torch.device | str,
    demos: Callable[[], Sequence[Sequence[tuple[str, int]]] | None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> WarmupResult:
    """Run the supervised warm-up into `<run>/warmup`, or reuse this run's or the cache's.

    The cache (`trainer.cache_dir`, keyed by `warmup_key`) holds finished warm-ups only; a folder
    becomes visible there or in the run by a rename, so a crash never leaves half a warm-up."""
    if not cfg.warmup.enable or cfg.warmup.steps == 0:
        return WarmupResult(None, "off")
    target = Path(run_dir) / WARMUP_DIR
    if (target / DONE_MARKER).exists():
        return WarmupResult(target, "run")
    cached = cached_warmup_path(cache_dir, warmup_key(cfg, len(prompts)))
    if cfg.warmup.cache and (cached / DONE_MARKER).exists():
        copy_dir(cached, target)
        return WarmupResult(target, "cache")
    from archer.core.models.loading import load_policy

    model, tok = load_policy(cfg)
    model.to(device)
    t0 = time.time()
    stats = run_warmup(
        model,
        tok,
        prompts,
        cfg.warmup,
        seed=int(cfg.seed),
        device=device,
        on_step=on_step,
        demos=demos() if demos is not None else None,
    )
    tmp = target.with_name(f".{WARMUP_DIR}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / DONE_MARKER).write_text(f"{stats}\n")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    if cfg.warmup.cache:
        copy_dir(target, cached)
    return WarmupResult(target, "trained", stats, time.time() - t0)
