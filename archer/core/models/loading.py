"""Load the policy model and tokenizer named by a config, from disk only (never from a hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archer.errors import ArcherError, UsageError

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and advisory warnings (archer reports progress itself)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, TORCH_DTYPES[name])


def load_tokenizer(model_cfg: Any) -> Any:
    """The tokenizer of `model.tokenizer_path` / `model.path`, or the char tokenizer for tiny models."""
    path = model_cfg.tokenizer_path or model_cfg.path
    if path is None:
        from archer.core.models.tiny import build_char_tokenizer

        return build_char_tokenizer()
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(
            f"tokenizer folder not found: {p}",
            hint="set model.tokenizer_path (or model.path) to a local folder",
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            str(p), local_files_only=True, trust_remote_code=model_cfg.trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise ArcherError(
            f"cannot load a tokenizer from {p}: {e}".splitlines()[0],
            hint="is it a Hugging Face tokenizer folder?",
        ) from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_policy(cfg: Any, *, init_from: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for `cfg.model`; `init_from` loads weights from a saved folder instead
    (a warm-up or checkpoint of the same model). Returns the model on CPU in train mode."""
    from archer.core.models.tiny import build_tiny_qwen2

    quiet_transformers()
    mcfg = cfg.model
    tokenizer = load_tokenizer(mcfg)
    source = init_from or mcfg.path
    if source is None:
        model = build_tiny_qwen2(
            mcfg.tiny,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            seed=int(cfg.seed),
            attn_implementation=mcfg.attn_implementation,
        )
        model.to(torch_dtype(mcfg.dtype))
    else:
        p = Path(source).expanduser()
        if not p.exists():
            raise UsageError(
                f"model folder not found: {p}", hint="set model.path to a local Hugging Face model folder"
            )
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(p),
                local_files_only=True,
                dtype=torch_dtype(mcfg.dtype),
                attn_implementation=mcfg.attn_implementation,
                trust_remote_code=mcfg.trust_remote_code,
            )
        except (OSError, ValueError, ImportError) as e:
            raise ArcherError(
                f"cannot load a model from {p}: {e}".splitlines()[0],
                hint="is it a Hugging Face model folder?",
            ) from e
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config.eos_token_id is None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
    if mcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, tokenizer
