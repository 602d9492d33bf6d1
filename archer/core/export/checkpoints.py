"""What a path holds: a local-engine run or checkpoint, a verl FSDP run or checkpoint, or a plain
Hugging Face model folder; and loading a model folder for inference.

Layouts recognised:

- local engine: `<run>/checkpoints/step_000010/` (`save_pretrained` model + tokenizer,
  `trainer_state.pt`), newest named by `<run>/checkpoints/latest.txt`;
- verl (FSDP): `<dir>/global_step_N/actor/` with `fsdp_config.json`,
  `model_world_size_W_rank_R.pt` for every rank and `huggingface/` (config + tokenizer), where
  `<dir>` is the run directory or its `checkpoints/`; the newest is named by
  `latest_checkpointed_iteration.txt`, as verl's trainer writes it;
- a Hugging Face model folder: `config.json` plus weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.errors import ArcherError, DataError, UsageError

LOCAL_STATE = "trainer_state.pt"
VERL_TRACKER = "latest_checkpointed_iteration.txt"
VERL_FSDP_CONFIG = "fsdp_config.json"
VERL_HF_DIR = "huggingface"
_STEP_DIR = re.compile(r"step_(\d+)")
_VERL_STEP_DIR = re.compile(r"global_step_(\d+)")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class Checkpoint:
    """A located checkpoint: `kind` is "local", "verl" or "hf"; `path` is the folder holding the
    weights (for verl, the `actor/` folder); `run_dir` is the run it belongs to, when known."""

    kind: str
    path: Path
    step: int | None = None
    run_dir: Path | None = None

    def describe(self) -> str:
        what = {
            "local": "local-engine checkpoint",
            "verl": "verl FSDP checkpoint",
            "hf": "Hugging Face model",
        }[self.kind]
        return f"{what} {self.path}" + (f" (step {self.step})" if self.step is not None else "")


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / w).is_file() for w in _WEIGHT_FILES)


def is_verl_actor(path: Path) -> bool:
    return (path / VERL_FSDP_CONFIG).is_file() or any(path.glob("model_world_size_*_rank_*.pt"))


def _steps(root: Path, pattern: re.Pattern[str], needs: str | None) -> dict[int, Path]:
    found: dict[int, Path] = {}
    if not root.is_dir():
        return found
    for p in root.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_dir() and (needs is None or (p / needs).exists()):
            found[int(m.group(1))] = p
    return found


def _pick(
    steps: dict[int, Path], step: int | None, latest: int | None, where: Path, what: str
) -> tuple[int, Path]:
    if step is not None:
        if step not in steps:
            have = ", ".join(str(s) for s in sorted(steps)) or "none"
            raise UsageError(f"no {what} for step {step} in {where}", hint=f"steps available: {have}")
        return step, steps[step]
    if latest is not None and latest in steps:
        return latest, steps[latest]
    last = max(steps)
    return last, steps[last]


def _local_latest(ckpt_root: Path) -> int | None:
    marker = ckpt_root / "latest.txt"
    try:
        m = _STEP_DIR.fullmatch(marker.read_text().strip())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _verl_latest(root: Path) -> int | None:
    try:
        return int((root / VERL_TRACKER).read_text().strip())
    except (OSError, ValueError):
        return None


def find_checkpoint(path: str | Path, step: int | None = None) -> Checkpoint:
    """What `path` holds, resolving a run directory to its latest (or `step`'s) checkpoint."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(
            f"not found: {p}", hint="pass a run directory, a checkpoint folder or a model folder"
        )
    if not p.is_dir():
        raise UsageError(
            f"not a directory: {p}", hint="pass a run directory, a checkpoint folder or a model folder"
        )

    def no_step(kind: str) -> None:
        if step is not None:
            raise UsageError(
                f"--step applies to a run directory, but {p} is a single {kind}",
                hint="pass the run directory instead, or drop --step",
            )

    # a single checkpoint folder
    if (p / LOCAL_STATE).is_file() and is_hf_folder(p):
        no_step("checkpoint")
        m = _STEP_DIR.fullmatch(p.name)
        run = p.parent.parent if p.parent.name == "checkpoints" else None
        return Checkpoint("local", p, int(m.group(1)) if m else None, run)
    if is_verl_actor(p):
        no_step("checkpoint")
        m = _VERL_STEP_DIR.fullmatch(p.parent.name)
        return Checkpoint("verl", p, int(m.group(1)) if m else None, _verl_run_of(p.parent))
    if _VERL_STEP_DIR.fullmatch(p.name) and is_verl_actor(p / "actor"):
        no_step("checkpoint")
        return Checkpoint(
            "verl", p / "actor", int(_VERL_STEP_DIR.fullmatch(p.name).group(1)), _verl_run_of(p)
        )

    # a run directory (or the checkpoints/ folder of one)
    for root, run in ((p / "checkpoints", p), (p, p.parent if p.name == "checkpoints" else p)):
        local = _steps(root, _STEP_DIR, LOCAL_STATE)
        if local:
            s, ck = _pick(local, step, _local_latest(root), root, "local checkpoint")
            return Checkpoint("local", ck, s, run)
        verl = {
            s: d / "actor"
            for s, d in _steps(root, _VERL_STEP_DIR, None).items()
            if is_verl_actor(d / "actor")
        }
        if verl:
            s, ck = _pick(verl, step, _verl_latest(root), root, "verl checkpoint")
            return Checkpoint("verl", ck, s, run)

    if is_hf_folder(p):
        no_step("model folder")
        return Checkpoint("hf", p)
    if (p / "config.yaml").is_file():
        raise DataError(
            f"{p} is a run directory without checkpoints",
            hint="runs save a checkpoint at their end and every trainer.save_every steps; "
            "was the run stopped before its first one?",
        )
    raise DataError(
        f"{p} holds no checkpoint or model",
        hint="expected a run directory (checkpoints/step_*/ or global_step_*/actor/), a checkpoint folder, "
        "or a Hugging Face model folder with config.json and weights",
    )


def _verl_run_of(step_dir: Path) -> Path | None:
    parent = step_dir.parent
    return parent.parent if parent.name == "checkpoints" else parent


def read_run_config(run_dir: Path | None) -> dict[str, Any] | None:
    """The run's resolved `config.yaml` as plain data, or None (no run, or unreadable)."""
    if run_dir is None:
        return None
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def torch_dtype(name: str) -> Any:
    """ "auto" (keep the folder's dtype) or fp32/bf16/fp16 as a torch dtype."""
    if name == "auto":
        return "auto"
    from archer.core.models.loading import torch_dtype as _dtype

    if name not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"unknown dtype {name!r}", hint="use one of: auto, fp32, bf16, fp16")
    return _dtype(name)


def load_model(
    path: Path, *, dtype: str = "auto", device: Any = "cpu", trust_remote_code: bool = False
) -> Any:
    """A causal LM from a local folder, in eval mode, never from a hub."""
    from transformers import AutoModelForCausalLM

    from archer.core.models.loading import quiet_transformers

    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, ImportError, KeyError) as e:
        raise ArcherError(
            f"cannot load a model from {path}: {e}".splitlines()[0],
            hint="is it a complete Hugging Face model folder?",
        ) from e
    model.to(device)
    model.eval()
    return model


def load_tokenizer(path: Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved in a folder, set up as archer's rollouts expect (left padding, a pad token)."""
    from types import SimpleNamespace

    from archer.core.models.loading import load_tokenizer as _load

    if not any(
        (path / f).is_file()
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    ):
        raise DataError(
            f"no tokenizer in {path}", hint="pass --tokenizer DIR (a folder saved with save_pretrained)"
        )
    return _load(
        SimpleNamespace(tokenizer_path=str(path), path=str(path), trust_remote_code=trust_remote_code)
    )


def fsdp_world_size(actor: Path) -> int:
    """The world size a verl FSDP checkpoint was saved with (from fsdp_config.json)."""
    try:
        cfg = json.loads((actor / VERL_FSDP_CONFIG).read_text())
        return int(cfg["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{actor / VERL_FSDP_CONFIG} is missing or unreadable ({e})",
            hint="verl writes it with every FSDP checkpoint; is the checkpoint complete?",
        ) from e
