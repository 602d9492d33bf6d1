"""Checkpoints of the local engine: `save_pretrained` model + tokenizer, optimizer, scheduler,
RNG states, data order and step, written to a temp folder and renamed into place, so a crash
never leaves a half checkpoint that `--resume` would pick up."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archer.core.run import atomic_write_text
from archer.core.storage import disk_full_error

CKPT_DIR = "checkpoints"
LATEST = "latest.txt"
STATE_FILE = "trainer_state.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CKPT_DIR


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(),
                **extra,
            },
            tmp / STATE_FILE,
        )
        (tmp / "checkpoint.json").write_text(json.dumps({"step": step}) + "\n")
        _fsync_dir(tmp)
    except BaseException as e:  # the half-written folder goes; the last complete checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full_error(tmp.with_name(final.name), e) if isinstance(e, Exception) else None
        if full is not None:
            raise full from e
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, final.name + "\n")
    _prune(root, keep)
    return final


#: pre-update snapshots of the steps `influence.check_every` marks, for `archer influence check`
SNAPSHOT_DIR = "influence"
SNAPSHOT_FILE = "update_state.pt"


def snapshot_dir(run_dir: Path, step: int) -> Path:
    """Where the state going into step `step`'s update is kept."""
    return checkpoint_dir(run_dir) / SNAPSHOT_DIR / f"before_step_{step:06d}"


def save_update_snapshot(run_dir: Path, step: int, *, model: Any, optimizer: Any, keep: int = 2) -> Path:
    """The weights and optimizer state right before step `step`'s update (the learning rate the
    update uses is in the optimizer's param groups), written like a checkpoint (temp folder,
    fsync, rename); the `keep` newest are kept (0: all). No tokenizer, RNG or data order: the
    counterfactual check takes the step's batch from the trace."""
    final = snapshot_dir(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, tmp / SNAPSHOT_FILE)
    (tmp / "checkpoint.json").write_text(json.dumps({"before_step": step}) + "\n")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in sorted(p for p in root.glob("before_step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    ckpts = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (the one `latest.txt` names, else the highest step)."""
    root = checkpoint_dir(run_dir)
    marker = root / LATEST
    if marker.exists():
        p = root / marker.read_text().strip()
        if (p / STATE_FILE).exists():
            return p
    ckpts = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists())
    return ckpts[-1] if ckpts else None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
