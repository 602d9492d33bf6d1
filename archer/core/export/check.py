"""Checks that an exported folder is the checkpoint: same weights, same logits on a few tokens.

Both models are run on the CPU in the exported folder's dtype on the same probe tokens, and the
logits must be bitwise equal (tolerance 0): the same weights through the same code give the same
numbers, so any difference means a wrong weight or a wrong config (tied embeddings, rope, ...).
For verl, whose merger writes bf16, the reference is the checkpoint's fp32 weights rounded to
bf16; how far that rounding moves the logits from the fp32 checkpoint is reported, not judged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROBE_TEXT = "12+34=46\nThe answer is"


@dataclass
class CheckResult:
    passed: bool
    tokens: int
    dtype: str
    max_abs_logit_diff: float
    weights_compared: int
    weight_mismatches: list[str] = field(default_factory=list)
    tolerance: float = 0.0
    fp32_max_abs_logit_diff: float | None = None  # verl only: drift from the bf16 rounding
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["weight_mismatches"] = self.weight_mismatches[:20]
        return d


def probe_ids(tokenizer: Any, vocab_size: int, length: int = 12) -> Any:
    """Two rows of `length` tokens: a tokenized text and a seeded random draw from the vocabulary."""
    import torch

    text = list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]) if tokenizer is not None else []
    text = [t for t in text if 0 <= t < vocab_size][:length]
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(0, vocab_size, (2, length), generator=g)
    if text:
        rand[0, : len(text)] = torch.tensor(text)
    return rand


def logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def compare(reference: Any, exported: Any, ids: Any, *, weights: dict[str, Any] | None = None) -> CheckResult:
    """Weights of `exported` against `weights` (default: `reference`'s), then logits on `ids`."""
    import torch

    exp_sd = exported.state_dict()
    ref_sd = weights if weights is not None else reference.state_dict()
    mismatches: list[str] = []
    compared = 0
    for key, value in exp_sd.items():
        if key not in ref_sd:
            mismatches.append(f"{key}: not in the checkpoint")
            continue
        want = ref_sd[key].to(value.dtype)
        compared += 1
        if want.shape != value.shape:
            mismatches.append(f"{key}: shape {tuple(value.shape)} vs {tuple(want.shape)}")
        elif not torch.equal(want, value):
            mismatches.append(f"{key}: max |diff| {(want.float() - value.float()).abs().max().item():.3g}")
    missing = sorted(set(ref_sd) - set(exp_sd))
    mismatches += [f"{k}: missing from the export" for k in missing]
    a, b = logits(reference, ids), logits(exported, ids)
    diff = (a - b).abs().max().item() if a.shape == b.shape else float("inf")
    dtype = str(next(exported.parameters()).dtype).replace("torch.", "")
    return CheckResult(
        passed=not mismatches and diff == 0.0,
        tokens=int(ids.numel()),
        dtype=dtype,
        max_abs_logit_diff=diff,
        weights_compared=compared,
        weight_mismatches=mismatches,
    )


@contextmanager
def _quiet_device_mesh() -> Iterator[None]:
    """torch warns when a DeviceMesh is unpickled without a process group; reading shards needs none."""
    log = logging.getLogger("torch.distributed.device_mesh")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def gather_fsdp_weights(actor: Path, world_size: int) -> dict[str, Any]:
    """The full fp32 state dict of a verl FSDP checkpoint, from its per-rank shards.

    An independent reading for the check, not the export: DTensor shards are joined along their
    Shard(dim) placement and must come out at the DTensor's global shape; replicated entries must
    agree across ranks. Meshes other than (fsdp,) and (ddp, fsdp) are refused, as in verl's merger.
    """
    import torch
    from torch.distributed.tensor import DTensor

    from archer.errors import ArcherError

    with _quiet_device_mesh():
        shards = [
            torch.load(
                actor / f"model_world_size_{world_size}_rank_{r}.pt", map_location="cpu", weights_only=False
            )
            for r in range(world_size)
        ]
    full: dict[str, Any] = {}
    for key, first in shards[0].items():
        if isinstance(first, DTensor):
            names = first.device_mesh.mesh_dim_names or ("fsdp",)
            if tuple(names) not in (("fsdp",), ("ddp", "fsdp")):
                raise ArcherError(
                    f"{key}: device mesh {names} is not supported by the export check",
                    hint="export with --no-check (verl's merger supports only (fsdp,) and (ddp, fsdp))",
                )
            placement = first.placements[-1]
            group = first.device_mesh.mesh.shape[-1]  # ranks 0..group-1 hold one full copy
            parts = [s[key]._local_tensor for s in shards[:group]]
            if placement.is_shard():
                tensor = torch.cat(parts, dim=placement.dim)
            elif placement.is_replicate():
                tensor = parts[0]
            else:
                raise ArcherError(
                    f"{key}: placement {placement} is not supported by the export check",
                    hint="export with --no-check",
                )
            if tuple(tensor.shape) != tuple(first.shape):
                raise ArcherError(
                    f"{key}: shards join to {tuple(tensor.shape)}, expected {tuple(first.shape)}",
                    hint="the checkpoint is incomplete or damaged",
                )
            full[key] = tensor.float()
        elif isinstance(first, torch.Tensor):
            for r, s in enumerate(shards[1:], 1):
                if not torch.equal(s[key], first):
                    raise ArcherError(
                        f"{key}: replicated entry differs between rank 0 and rank {r}",
                        hint="the checkpoint is damaged",
                    )
            full[key] = first.float() if first.is_floating_point() else first
    return full


def verl_reference(
    hf_dir: Path, weights: dict[str, Any], *, dtype: Any, trust_remote_code: bool = False
) -> Any:
    """The checkpoint as a model: its saved config and its gathered weights, built in `dtype`
    (loading fp32 weights into bf16 parameters rounds them as verl's merger does; buffers such as
    rotary frequencies stay as transformers makes them, exactly as when the export is loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from archer.errors import ArcherError

    config = AutoConfig.from_pretrained(
        str(hf_dir), local_files_only=True, trust_remote_code=trust_remote_code
    )
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    sd = model.state_dict()
    loaded_ptrs = {sd[k].data_ptr() for k in weights if k in sd}
    untied = [k for k in missing if sd[k].data_ptr() not in loaded_ptrs]  # tied keys share a loaded tensor
    if unexpected or untied:
        raise ArcherError(
            f"the checkpoint's weights do not fit its config: missing {untied[:5]}, unexpected "
            f"{list(unexpected)[:5]}",
            hint="is huggingface/config.json the config of the trained model?",
        )
    model.eval()
    return model
