"""Which config keys a run's engine does not read, and why (`archer presets show --explain`).

One schema serves both engines; some keys mean something on one engine only (the local engine's
generation batching, the verl section), and some only while another key leaves room for them (the
tiny model and its warm-up only while `model.path` is unset). Rules are key prefixes; the first
rule that covers a key gives its reason. Imports nothing heavy: `presets show` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

# (key prefix, reason, applies to this config?) per engine
Rule = tuple[str, str, Callable[[Any], bool]]


def _always(cfg: Any) -> bool:
    return True


def _model_given(cfg: Any) -> bool:
    """model.path set, or required (`???`, to be given): either way the tiny model is not built."""
    return OmegaConf.is_missing(cfg.model, "path") or bool(cfg.model.path)


def _data_given(cfg: Any) -> bool:
    return OmegaConf.is_missing(cfg.data, "train_files") or bool(cfg.data.train_files)


RULES: dict[str, list[Rule]] = {
    "verl": [
        ("rollout.generation_batch_size", "local engine only (verl batches rollouts itself)", _always),
        ("rollout.compile_decode", "local engine only (HF generate)", _always),
        ("trainer.logging.log_every", "local engine only (verl prints every step)", _always),
        ("model.tiny.", "used only without model.path (here it is set)", _model_given),
        ("warmup.", "used only without model.path (here it is set)", _model_given),
        ("data.synth.", "used only without data.train_files (here they are set)", _data_given),
    ],
    "local": [
        ("verl.", "verl engine only (passed to verl as written)", _always),
        ("model.tiny.", "used only without model.path (here it is set)", _model_given),
        ("data.synth.", "used only without data.train_files (here they are set)", _data_given),
    ],
}


def ignored_reason(cfg: Any, key: str) -> str | None:
    """Why the config's engine does not read `key`, or None when it does."""
    for prefix, reason, applies in RULES.get(str(cfg.engine), []):
        if (key == prefix.rstrip(".") or key.startswith(prefix)) and applies(cfg):
            return reason
    return None
