"""What a verl run reads that archer can make itself: the synthetic task's parquet files and the
tiny model (optionally after archer's supervised warm-up), written into the run directory before
verl starts, so quickstart-verl's synthetic task and tiny model run through verl's real trainer
with no download.

verl reads prompts from parquet files and a model from a folder. When `data.train_files` is
empty the configured synthetic task (`data.synth`) is written to `<run>/data/`; when `model.path`
is null the tiny model is saved to `<run>/model/` with its character tokenizer, or, with
`warmup.enable`, warmed up first (archer.core.warmup, cached like the local engine's) into
`<run>/warmup/`. The config then names those paths, so `config.yaml` says what verl read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.errors import ConfigError

MODEL_DIR = "model"
DATA_DIR = "data"


@dataclass
class Inputs:
    """The paths a verl run reads, and what archer made for it (for the plan and the log)."""

    train_files: list[str]
    val_files: list[str]
    model_path: str | None
    made: list[str] = field(default_factory=list)  # human-readable notes


def _missing(cfg: Any, section: str, key: str) -> bool:
    from omegaconf import OmegaConf

    return OmegaConf.is_missing(cfg[section], key)


def _given(cfg: Any, section: str, key: str) -> bool:
    """The key has a value (a required `???` one still unset counts as given: the run refuses it
    later, naming it)."""
    return _missing(cfg, section, key) or bool(cfg[section][key])


def _set(cfg: Any, key: str, value: Any) -> None:
    from omegaconf import OmegaConf

    OmegaConf.update(cfg, key, value, merge=False)


def check_supported(cfg: Any, run_dir: Path) -> None:
    """archer's inputs for verl: the arithmetic task and the tiny model; warm-up only for it (a
    resumed run's config names the run's own warm-up, which is that)."""
    from archer.core.agent.engine import TOOL_TASKS
    from archer.core.warmup import WARMUP_DIR

    task = cfg.data.synth.task
    tool_task = task in TOOL_TASKS and bool(cfg.agent.enable)
    if not _given(cfg, "data", "train_files") and task != "arithmetic" and not tool_task:
        raise ConfigError(
            f"engine: verl writes the arithmetic synthetic task, or a tool task with agent.enable, "
            f"not data.synth.task={task}" + (" without agent.enable" if task in TOOL_TASKS else ""),
            hint="add agent.enable=true for a tool task; or give data.train_files",
        )
    own = str((Path(run_dir) / WARMUP_DIR).resolve())
    path = None if _missing(cfg, "model", "path") else cfg.model.path
    if cfg.warmup.enable and path is not None and path != own:
        raise ConfigError(
            "warmup.enable on engine: verl warms up archer's tiny model only (model.path is set)",
            hint="set warmup.enable=false, or fine-tune the model before the run",
        )


def plan_inputs(cfg: Any, run_dir: Path) -> Inputs:
    """The paths the run will read, without writing anything (the dry run)."""
    from archer.core.data import TRAIN_FILE, VAL_FILE
    from archer.core.warmup import WARMUP_DIR

    run_dir = Path(run_dir).resolve()
    check_supported(cfg, run_dir)
    made = []
    train = [] if _missing(cfg, "data", "train_files") else list(cfg.data.train_files)
    val = [] if _missing(cfg, "data", "val_files") else list(cfg.data.val_files)
    if not _given(cfg, "data", "train_files"):
        s = cfg.data.synth
        train = [str(run_dir / DATA_DIR / TRAIN_FILE)]
        if not val and int(s.val_n) > 0:
            val = [str(run_dir / DATA_DIR / VAL_FILE)]
        made.append(f"synthetic {s.task} task ({s.n} train, {s.val_n} val prompts) -> {run_dir / DATA_DIR}")
    model = None if _missing(cfg, "model", "path") else cfg.model.path
    if not _given(cfg, "model", "path"):
        if cfg.warmup.enable:
            model = str(run_dir / WARMUP_DIR)
            made.append(f"tiny model, warmed up {cfg.warmup.steps} steps (cached) -> {model}")
        else:
            model = str(run_dir / MODEL_DIR)
            made.append(f"tiny model (seed {cfg.seed}, built in code) -> {model}")
    return Inputs(train, val, model, made)


def make_inputs(
    cfg: Any, run_dir: Path, *, cache_dir: Path, on_warmup_step: Any = None, on_warmup_wait: Any = None
) -> Inputs:
    """Write what `plan_inputs` names (each only once per run directory; a resumed run reuses
    them) and point the config at it. `cfg` is archer's composed config, changed in place."""
    from archer.core.rollout.prompts import synth_files

    plan = plan_inputs(cfg, run_dir)
    run_dir = Path(run_dir).resolve()
    if not _given(cfg, "data", "train_files"):
        from archer.core.agent.engine import TOOL_TASKS, prepare_task_data

        if cfg.data.synth.task in TOOL_TASKS:  # agent.enable (check_supported): tasks and corpus
            prepare_task_data(cfg, run_dir / DATA_DIR)
        train, val = synth_files(cfg, run_dir / DATA_DIR)
        _set(cfg, "data.train_files", train)
        if not _given(cfg, "data", "val_files"):
            _set(cfg, "data.val_files", val)
    if not _given(cfg, "model", "path"):
        model = _make_model(cfg, run_dir, cache_dir, on_warmup_step, on_warmup_wait)
        _set(cfg, "model.path", model)
        _set(cfg, "model.tokenizer_path", str(Path(model) / TOKENIZER_DIR))
    return Inputs(list(cfg.data.train_files), list(cfg.data.val_files), cfg.model.path, plan.made)


CHATML_END = "<|im_end|>"
TOKENIZER_DIR = "tokenizer"


def fit_tokenizer_for_verl(folder: Path) -> Path:
    """The tiny model's tokenizer as verl needs it, saved to `<folder>/tokenizer` (returned).

    verl's agent loop picks its token builder by the model's `model_type`; for qwen2 (the tiny
    model) it needs a one-token newline and an `<|im_end|>` token. transformers' AutoTokenizer,
    seeing qwen2 in the folder's config.json, loads the character tokenizer as Qwen2's (which drops
    newlines); a tokenizer folder of its own loads as saved. The ChatML end token adds one
    embedding row, never needed for arithmetic. The local engine's tokenizer is unchanged."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    tok_dir = folder / TOKENIZER_DIR
    tok = PreTrainedTokenizerFast.from_pretrained(folder)  # the class it was saved as, not qwen2's
    if CHATML_END not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [CHATML_END]})
    model = AutoModelForCausalLM.from_pretrained(folder)
    if model.get_input_embeddings().weight.shape[0] < len(tok):
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(tok_dir)
    return tok_dir


def _make_model(
    cfg: Any, run_dir: Path, cache_dir: Path, on_warmup_step: Any, on_warmup_wait: Any = None
) -> str:
    import shutil

    from archer.core.models.loading import load_policy, load_tokenizer
    from archer.core.rollout.prompts import load_datasets
    from archer.core.warmup import prepare_warmup

    if cfg.warmup.enable:
        tokenizer = load_tokenizer(cfg.model)
        train, _, _ = load_datasets(cfg, tokenizer, run_dir)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # before Ray: the GPU is still free
        runner = None
        if cfg.agent.enable:  # tool-use demonstrations, built by calling the real tools
            from archer.core.agent.engine import AgentRunner

            runner = AgentRunner(cfg, tokenizer, run_dir, cache_dir, device)
        try:
            result = prepare_warmup(
                cfg,
                run_dir,
                cache_dir,
                train,
                device=device,
                demos=(lambda: runner.demonstrations(train)) if runner is not None else None,
                on_step=on_warmup_step,
                on_wait=on_warmup_wait,
            )
        finally:
            if runner is not None:
                runner.close()
        if device == "cuda":  # hand the memory back before verl's workers take the GPU
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        if not (result.path / TOKENIZER_DIR).is_dir():
            fit_tokenizer_for_verl(result.path)
        return str(result.path)
    target = run_dir / MODEL_DIR
    if (target / TOKENIZER_DIR).is_dir():
        return str(target)
    model, tokenizer = load_policy(cfg)
    tmp = target.with_name(f".{MODEL_DIR}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    fit_tokenizer_for_verl(tmp)
    tmp.rename(target)
    return str(target)
