"""Training prompts for the local engine: load or synthesise them, tokenize once, and hand out
batches in a seeded, resumable order (a fresh permutation every epoch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archer.errors import DataError


@dataclass
class Prompt:
    """A prompt ready for rollout: its token ids, its answer and where it came from."""

    ids: list[int]
    answer: str
    data_source: str
    index: int


def encode_prompt(tokenizer: Any, prompt: str | Sequence[dict], apply_chat_template: bool) -> list[int]:
    """Token ids of a prompt: chat-message lists go through the tokenizer's chat template."""
    if isinstance(prompt, str):
        text = prompt
    else:
        messages = [dict(m) for m in prompt]
        if apply_chat_template and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n".join(str(m.get("content", "")) for m in messages)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def synth_files(cfg: Any, data_dir: Path) -> tuple[list[str], list[str]]:
    """Write the configured synthetic task into the run's data/ folder (once) and return its files."""
    from archer.core.data.synth import write_arithmetic

    train, val = data_dir / "train.parquet", data_dir / "val.parquet"
    if not (train.exists() and val.exists()) and cfg.data.synth.task == "chain":
        from archer.core.data.chain import resolve_chain_spec, write_chains

        s = cfg.data.synth
        spec = resolve_chain_spec(int(s.terms), int(s.max_operand), str(s.ops), int(s.min_terms))
        write_chains(data_dir, n=int(s.n), val_n=int(s.val_n), seed=int(cfg.seed), spec=spec)
    elif not (train.exists() and val.exists()):
        s = cfg.data.synth
        write_arithmetic(
            data_dir,
            n=int(s.n),
            val_n=int(s.val_n),
            seed=int(cfg.seed),
            difficulty=s.difficulty,
            max_operand=int(s.max_operand),
            ops=str(s.ops),
        )
    return [str(train)], ([str(val)] if int(cfg.data.synth.val_n) > 0 else [])


def load_split(files: Sequence[str], cfg: Any, tokenizer: Any) -> tuple[list[Prompt], int]:
    """Tokenized prompts of some files, dropping those over data.max_prompt_length.
    Returns (prompts, number dropped)."""
    from archer.core.data.loading import load_prompts

    if not files:
        return [], 0
    records = load_prompts(list(files), prompt_key=cfg.data.prompt_key, answer_key=cfg.data.answer_key)
    prompts, dropped = [], 0
    for r in records:
        ids = encode_prompt(tokenizer, r.prompt, cfg.data.apply_chat_template)
        if not ids or len(ids) > cfg.data.max_prompt_length:
            dropped += 1
            continue
        prompts.append(Prompt(ids=ids, answer=str(r.answer), data_source=r.data_source, index=int(r.index)))
    return prompts, dropped


def load_datasets(
    cfg: Any, tokenizer: Any, run_dir: Path
) -> tuple[list[Prompt], list[Prompt], dict[str, int]]:
    """(train prompts, validation prompts, counts) for a config: its files, or the synthetic task."""
    train_files, val_files = list(cfg.data.train_files), list(cfg.data.val_files)
    if not train_files:
        synth_train, synth_val = synth_files(cfg, run_dir / "data")
        train_files = synth_train
        val_files = val_files or synth_val
    train, dropped_train = load_split(train_files, cfg, tokenizer)
    val, dropped_val = load_split(val_files, cfg, tokenizer)
    if not train:
        raise DataError(
            f"no usable training prompts in {', '.join(train_files)}"
            + (
                f" ({dropped_train} longer than data.max_prompt_length={cfg.data.max_prompt_length})"
                if dropped_train
                else ""
            ),
            hint="check data.train_files and data.max_prompt_length",
        )
    if len(train) < cfg.data.train_batch_size:
        raise DataError(
            f"only {len(train)} training prompts, fewer than "
            f"data.train_batch_size={cfg.data.train_batch_size}",
            hint="use more data or a smaller data.train_batch_size",
        )
    return (
        train,
        val,
        {"train": len(train), "val": len(val), "dropped_train": dropped_train, "dropped_val": dropped_val},
    )


class PromptSampler:
    """Seeded epoch permutations; `take(k)` continues across epochs; state is checkpointable."""

    def __init__(self, size: int, *, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.cursor >= self.size:
                self.epoch += 1
                self.cursor = 0
                self._order = self._permutation(self.epoch)
            n = min(k - len(out), self.size - self.cursor)
            out.extend(int(i) for i in self._order[self.cursor : self.cursor + n])
            self.cursor += n
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("size") != self.size:
            raise DataError(
                f"the training set changed size since the checkpoint ({state.get('size')} -> {self.size})",
                hint="resume with the same data.train_files",
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation(self.epoch)
