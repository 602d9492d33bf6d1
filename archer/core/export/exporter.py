"""`archer export`: a checkpoint becomes a Hugging Face model folder, checked before it is put in place.

- local engine: the checkpoint already holds a `save_pretrained` model and tokenizer; they are
  loaded and saved again without the trainer state (optimizer, RNG), weights unchanged.
- verl FSDP: verl's own model merger (`python -m verl.model_merger merge --backend fsdp`) joins
  the per-rank shards and writes the model (in bf16, as verl does) and the tokenizer from the
  checkpoint's `huggingface/` folder.

The folder is built under a temporary name beside `--out`, checked (`check.py`), given an
`archer_export.json` that records the source and the check, and only then renamed to `--out`:
a failed export or check never leaves something at `--out` that looks like a model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.core.export.checkpoints import (
    VERL_HF_DIR,
    Checkpoint,
    find_checkpoint,
    fsdp_world_size,
    load_model,
    load_tokenizer,
)
from archer.errors import ArcherError, DataError, UsageError

EXPORT_FILE = "archer_export.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class ExportReport:
    source: Checkpoint
    out: Path
    check: dict[str, Any] | None
    seconds: float
    files: list[str]


def _check_out(out: Path, source: Path, force: bool) -> None:
    out_r, src_r = out.resolve(), source.resolve()
    if out_r == src_r or out_r in src_r.parents:
        raise UsageError(
            f"--out {out} would overwrite the checkpoint it exports", hint="choose a folder outside the run"
        )
    if src_r in out_r.parents:
        raise UsageError(
            f"--out {out} is inside the checkpoint folder", hint="choose a folder outside the checkpoint"
        )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory", hint="choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(
            f"--out {out} is not empty", hint="choose an empty or new folder, or pass --force to replace it"
        )


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in TOKENIZER_FILES)


def export_checkpoint(
    path: str | Path,
    *,
    out: str | Path,
    step: int | None = None,
    force: bool = False,
    check: bool = True,
    tokenizer: str | Path | None = None,
    trust_remote_code: bool = False,
    status: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export the checkpoint at `path` (a run: its latest, or `step`) to the model folder `out`."""
    t0 = time.time()
    say = status or (lambda _msg: None)
    ckpt = find_checkpoint(path, step)
    if ckpt.kind == "hf":
        raise UsageError(
            f"{ckpt.path} is already a Hugging Face model folder; there is nothing to export",
            hint=f"use it as it is, e.g. archer eval --model {ckpt.path}",
        )
    out = Path(out).expanduser()
    _check_out(out, ckpt.path, force)
    tok_dir = Path(tokenizer).expanduser() if tokenizer else None
    if tok_dir is not None and not _has_tokenizer(tok_dir):
        raise UsageError(
            f"no tokenizer in --tokenizer {tok_dir}", hint="pass a folder saved with save_pretrained"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if ckpt.kind == "local":
            say(f"writing the model of {ckpt.path.name}…")
            _export_local(ckpt, tmp, tok_dir, trust_remote_code)
        else:
            _export_verl(ckpt, tmp, tok_dir, trust_remote_code, say)
        result = None
        if check:
            say("checking the export against the checkpoint…")
            result = (
                _check_local(ckpt, tmp, trust_remote_code)
                if ckpt.kind == "local"
                else _check_verl(ckpt, tmp, trust_remote_code)
            ).as_dict()
            if not result["passed"]:
                what = (
                    f"{len(result['weight_mismatches'])} weights differ (e.g. "
                    f"{result['weight_mismatches'][0]})"
                    if result["weight_mismatches"]
                    else f"logits differ by up to {result['max_abs_logit_diff']:.3g}"
                )
                raise ArcherError(
                    f"the exported model does not match the checkpoint: {what}; nothing was written to {out}",
                    hint="please report this with ARCHER_DEBUG=1 output; --no-check skips the check",
                )
        _write_record(tmp, ckpt, result)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(p.name for p in out.iterdir())
    return ExportReport(ckpt, out, result, time.time() - t0, files)


def _write_record(folder: Path, ckpt: Checkpoint, check: dict[str, Any] | None) -> None:
    from archer import __version__
    from archer.core.evaluation.results import json_ready
    from archer.core.evaluation.samples import now

    record = {
        "source": str(ckpt.path.resolve()),
        "kind": ckpt.kind,
        "step": ckpt.step,
        "run_dir": str(ckpt.run_dir.resolve()) if ckpt.run_dir else None,
        "merger": "verl.model_merger (fsdp)" if ckpt.kind == "verl" else "transformers save_pretrained",
        "check": check,
        "archer_version": __version__,
        "created": now(),
    }
    (folder / EXPORT_FILE).write_text(json.dumps(json_ready(record), indent=2) + "\n")


# --------------------------------------------------------------------------- local engine


def _export_local(ckpt: Checkpoint, tmp: Path, tok_dir: Path | None, trust_remote_code: bool) -> None:
    from transformers import AutoTokenizer

    model = load_model(ckpt.path, dtype="auto", trust_remote_code=trust_remote_code)
    model.save_pretrained(tmp, safe_serialization=True)
    src = tok_dir or ckpt.path
    if not _has_tokenizer(src):
        raise DataError(f"no tokenizer in {src}", hint="pass --tokenizer DIR")
    AutoTokenizer.from_pretrained(
        str(src), local_files_only=True, trust_remote_code=trust_remote_code
    ).save_pretrained(tmp)


def _check_local(ckpt: Checkpoint, tmp: Path, trust_remote_code: bool) -> Any:
    from archer.core.export.check import compare, probe_ids

    ref = load_model(ckpt.path, dtype="auto", trust_remote_code=trust_remote_code)
    exp = load_model(tmp, dtype="auto", trust_remote_code=trust_remote_code)
    tok = load_tokenizer(tmp, trust_remote_code=trust_remote_code)
    return compare(ref, exp, probe_ids(tok, int(exp.config.vocab_size)))


# --------------------------------------------------------------------------- verl FSDP


def check_verl_actor(actor: Path, tok_dir: Path | None) -> int:
    """What verl's FSDP merger needs from `actor/`, checked up front with clear messages; returns the
    world size."""
    world = fsdp_world_size(actor)
    missing = [
        f"model_world_size_{world}_rank_{r}.pt"
        for r in range(world)
        if not (actor / f"model_world_size_{world}_rank_{r}.pt").is_file()
    ]
    if missing:
        raise DataError(
            f"{actor} lacks model shards: {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""),
            hint="the checkpoint is incomplete (every rank writes its own shard)",
        )
    hf = actor / VERL_HF_DIR
    cfg_path = hf / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot read {cfg_path}: {e}",
            hint="verl saves the model config in huggingface/ with every checkpoint",
        ) from e
    if not cfg.get("architectures"):
        raise DataError(
            f"{cfg_path} names no architecture, so verl's merger cannot pick a model class",
            hint='add e.g. "architectures": ["Qwen2ForCausalLM"] to it',
        )
    if (actor / "lora_train_meta.json").is_file():
        raise UsageError(
            f"{actor} is a LoRA checkpoint; archer export handles full-model checkpoints",
            hint="run verl's merger yourself: python -m verl.model_merger merge --backend fsdp ...",
        )
    if tok_dir is None and not _has_tokenizer(hf):
        raise DataError(
            f"no tokenizer in {hf}", hint="pass --tokenizer DIR (the tokenizer the run trained with)"
        )
    return world


def _export_verl(
    ckpt: Checkpoint, tmp: Path, tok_dir: Path | None, trust_remote_code: bool, say: Callable[[str], None]
) -> None:
    if importlib.util.find_spec("verl") is None:
        raise ArcherError(
            "exporting a verl checkpoint runs verl's model merger, and verl is not installed",
            hint="pip install 'archer[verl]'",
        )
    world = check_verl_actor(ckpt.path, tok_dir)
    say(f"merging {world} FSDP shard{'s' if world > 1 else ''} with verl's model merger…")
    cmd = [
        sys.executable,
        "-m",
        "verl.model_merger",
        "merge",
        "--backend",
        "fsdp",
        "--local_dir",
        str(ckpt.path),
        "--target_dir",
        str(tmp),
    ]
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-12:])
        raise ArcherError(
            f"verl's model merger failed (exit {r.returncode}):\n{tail}",
            hint="run it by hand to see everything: " + " ".join(cmd[1:]),
        )
    if tok_dir is not None and not _has_tokenizer(tmp):
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(
            str(tok_dir), local_files_only=True, trust_remote_code=trust_remote_code
        ).save_pretrained(tmp)


def _check_verl(ckpt: Checkpoint, tmp: Path, trust_remote_code: bool) -> Any:
    import torch

    from archer.core.export.check import compare, gather_fsdp_weights, logits, probe_ids, verl_reference

    world = fsdp_world_size(ckpt.path)
    weights = gather_fsdp_weights(ckpt.path, world)
    exp = load_model(tmp, dtype="auto", trust_remote_code=trust_remote_code)
    tok = load_tokenizer(tmp, trust_remote_code=trust_remote_code)
    ids = probe_ids(tok, int(exp.config.vocab_size))
    hf = ckpt.path / VERL_HF_DIR
    ref = verl_reference(hf, weights, dtype=torch.float32, trust_remote_code=trust_remote_code)
    full = {k: v.clone() for k, v in ref.state_dict().items()}  # tied keys filled in
    fp32_logits = logits(ref, ids)
    del ref, weights
    dtype = next(exp.parameters()).dtype
    ref = verl_reference(hf, full, dtype=dtype, trust_remote_code=trust_remote_code)
    result = compare(ref, exp, ids, weights=full)
    result.fp32_max_abs_logit_diff = (logits(exp, ids) - fp32_logits).abs().max().item()
    result.notes.append(
        f"reference: the {world} shard(s) joined, with the checkpoint's config, in {result.dtype}; "
        "fp32_max_abs_logit_diff is the effect of that rounding"
    )
    return result
