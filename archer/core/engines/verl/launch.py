"""`archer train` for `engine: verl`: compose and check verl's config, then run it on Ray with
archer's task runner; `--dry-run` returns the composed verl config and the plan (the CLI prints
them) without Ray.

Everything that can be wrong with the config fails here, before Ray starts: archer's schema
(compose), the mapping and every `verl.*` key (config.compose_verl), verl's own checks
(config.check_with_verl), the plugin's registration and the rollout engine's presence.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.core.progress import Reporter, TrainResult
from archer.errors import ArcherError, ConfigError

VERL_CONFIG_FILE = "verl_config.yaml"
ROLLOUT_MODULES = {"vllm": "vllm", "sglang": "sglang", "trtllm": "tensorrt_llm", "hf": "transformers"}


def rollout_installed(engine: Any) -> bool:
    """Whether the Python package of verl's rollout engine `engine` is importable here."""
    module = ROLLOUT_MODULES.get(str(engine), str(engine))
    return importlib.util.find_spec(module) is not None


def accelerator_present() -> bool:
    """A CUDA device is visible here (imports torch)."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(composed: Any) -> str | None:
    """`trainer.device=auto` with the hf rollout becomes cpu on a machine without a GPU, so
    `archer train` runs verl here; returns a note saying so, or None. (A vLLM or SGLang preset is
    not moved to the CPU: a cluster config on a laptop is refused before Ray starts instead.)"""
    from omegaconf import OmegaConf

    cfg = composed.cfg
    if cfg.trainer.device != "auto" or cfg.rollout.backend != "hf" or accelerator_present():
        return None
    OmegaConf.update(cfg, "trainer.device", "cpu", merge=False)
    return "no GPU here: verl runs on this machine's CPUs (trainer.device=cpu, archer's CPU platform)"


def prepare(composed: Any, run_dir: Path, *, resume: bool = False) -> Any:
    """The verl config this run would use, checked by archer and by verl (imports verl)."""
    from archer.core.engines.verl.config import apply_runtime_env, check_with_verl, compose_verl

    vc = compose_verl(composed, run_dir, resume=resume)
    apply_runtime_env(vc, run_dir)
    check_with_verl(vc)
    return vc


def _local_path(value: Any) -> Path | None:
    """A path on this machine, or None for a remote one (hdfs://, s3://, ...) that verl copies."""
    text = str(value)
    return None if "://" in text else Path(text).expanduser()


def _hub_id(text: str) -> bool:
    """`org/name`: transformers fetches it from the hub (or its cache)."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not text.endswith("/")


def _files(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def count_prompts(path: Path) -> int:
    """Rows of a parquet (from its footer) or jsonl file (non-empty lines)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def check_inputs(vc: Any, will_make: Any = ()) -> int | None:
    """model.path, the tokenizer and the data files exist on this machine, and the training files
    hold at least one batch of prompts (verl's trainer divides by len(data) // batch size). Paths
    verl fetches itself (a scheme://) are left to it, and so are `will_make`, the paths archer
    writes before verl starts (a dry run checks them as plans). Returns the number of training
    prompts (None when a file is remote or not made yet)."""
    s = vc.select
    skip = {str(p) for p in will_make}
    for key, archer_key in (
        ("actor_rollout_ref.model.path", "model.path"),
        ("actor_rollout_ref.model.tokenizer_path", "model.tokenizer_path"),
    ):
        value = s(key)
        path = _local_path(value) if value and str(value) not in skip else None
        if path is not None and not path.exists() and not _hub_id(str(value)):
            raise ConfigError(
                f"{archer_key} {value} does not exist on this machine",
                hint="a local model directory (config.json, weights) or a hub id (Qwen/Qwen2.5-7B)",
            )
    total: int | None = 0
    for key, archer_key in (("data.train_files", "data.train_files"), ("data.val_files", "data.val_files")):
        for f in _files(s(key)):
            path = _local_path(f) if str(f) not in skip else None
            if path is None:
                total = None if key == "data.train_files" else total
                continue
            if not path.is_file():
                raise ConfigError(
                    f"{archer_key}: {f} does not exist",
                    hint="archer data prepare dapo-math --input FILE --out DIR writes verl's layout",
                )
            if key == "data.train_files" and total is not None:
                total += count_prompts(path)
    if total is not None:
        check_batch_fits(total, int(s("data.train_batch_size")), filtered=False)
    return total


def check_batch_fits(
    prompts: int, batch: int, *, filtered: bool, max_prompt_length: int | None = None
) -> None:
    """At least one batch of prompts, or verl's trainer divides by zero before step 1."""
    if prompts >= batch:
        return
    where = (
        f"left after dropping prompts longer than data.max_prompt_length={max_prompt_length}"
        if filtered
        else "in data.train_files"
    )
    raise ConfigError(
        f"{prompts} prompts {where}, fewer than one batch (data.train_batch_size={batch})",
        hint=f"data.train_batch_size={max(1, prompts)} or fewer, or more prompts",
    )


def check_attention(vc: Any) -> None:
    """flash_attention_2 needs the flash-attn package, which no archer extra installs (its wheels
    are built per torch and CUDA): refuse before Ray starts instead of failing in every worker."""
    from archer.core.engines.verl.config import ATTENTION, uses_flash_attention

    if uses_flash_attention(vc.cfg) and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            f"model.attn_implementation={vc.select(ATTENTION)} needs the flash-attn package, "
            "which is not installed here",
            hint="install a flash-attn build that matches your torch and CUDA (docs/install.md), "
            "or set model.attn_implementation=sdpa (archer then turns remove-padding off)",
        )


def plan_rows(
    vc: Any, run_dir: Path, plugin_status: dict | None = None, inputs: Any = None
) -> list[tuple[str, str]]:
    """(label, value) lines describing where and how the run would go."""
    s = vc.select
    nnodes, per_node = int(s("trainer.nnodes")), int(s("trainer.n_gpus_per_node"))
    engine = s("actor_rollout_ref.rollout.name")
    installed = rollout_installed(engine)
    n = int(s("actor_rollout_ref.rollout.n"))
    prompts = int(s("data.train_batch_size"))
    mini = int(s("actor_rollout_ref.actor.ppo_mini_batch_size"))
    infl = s("archer.influence")
    trace = s("archer.trace")
    made = [] if inputs is None else inputs.made
    rows = [
        ("nodes", f"{nnodes} (trainer.nnodes; a multi-node run needs a Ray cluster: docs/verl.md)"),
        ("GPUs per node", f"{per_node} ({nnodes * per_node} in total; trainer.n_gpus_per_node)"),
        (
            "rollout engine",
            f"{engine}, tensor parallel {s('actor_rollout_ref.rollout.tensor_model_parallel_size')}, "
            f"gpu_memory_utilization {s('actor_rollout_ref.rollout.gpu_memory_utilization')} "
            f"({'installed' if installed else 'NOT installed here'})",
        ),
        ("model", str(s("actor_rollout_ref.model.path"))),
        (
            "attention",
            f"{s('actor_rollout_ref.model.override_config.attn_implementation')}, remove-padding "
            f"{'on' if s('actor_rollout_ref.model.use_remove_padding') else 'off'}"
            + "".join(f"; {n}" for n in getattr(vc, "notes", [])),
        ),
        ("data", ", ".join(str(f) for f in _files(s("data.train_files")))),
        (
            "trainer",
            f"archer_sync in verl mode {s('trainer.v1.trainer_mode')} (V1, TransferQueue), FSDP strategy "
            f"{s('actor_rollout_ref.actor.strategy')}",
        ),
        (
            "algorithm",
            f"{s('algorithm.adv_estimator')}, policy loss "
            f"{s('actor_rollout_ref.actor.policy_loss.loss_mode')}, "
            f"{s('actor_rollout_ref.actor.loss_agg_mode')}",
        ),
        (
            "batch",
            f"{prompts} prompts x {n} = {prompts * n} responses per step; mini-batch {mini} prompts, "
            f"{s('actor_rollout_ref.actor.ppo_epochs')} epoch(s) -> "
            f"{(prompts // max(1, mini)) * int(s('actor_rollout_ref.actor.ppo_epochs'))} optimizer step(s) "
            "per step",
        ),
        (
            "steps",
            f"{s('trainer.total_training_steps')} ("
            + (
                f"validate every {s('trainer.test_freq')}"
                if int(s("trainer.test_freq")) > 0
                else "no validation: data.val_files is empty"
            )
            + f", checkpoint every {s('trainer.save_freq')})",
        ),
        (
            "influence",
            "off"
            if not infl["enable"]
            else f"on: {infl['output_function']}, {infl['hessian_mode']} ({infl['hessian_source']} Hessian), "
            f"modules "
            f"/{infl['module_name_filter']}/ (last {infl['max_modules'] or 'all'})",
        ),
        *[("made by archer", m) for m in made],
        ("output", str(run_dir)),
        ("  checkpoints", str(s("trainer.default_local_dir"))),
        ("  trace", (trace.get("dir") or str(Path(run_dir) / "trace")) if trace["enable"] else "off"),
        (
            "  metrics",
            f"{Path(run_dir) / 'metrics.jsonl'}; trackers {', '.join(s('trainer.logger'))}"
            + "".join(f" ({n})" for n in getattr(vc, "tracker_notes", [])),
        ),
    ]
    if plugin_status is not None:
        routes = [
            r
            for r, ok in (
                ("entry point", plugin_status["entry_point"]),
                ("VERL_USE_EXTERNAL_MODULES", plugin_status["env_var"]),
            )
            if ok
        ]
        state = "registered" if plugin_status["registered"] else f"FAILED: {plugin_status['error']}"
        rows.append(
            (
                "verl plugin",
                f"{state} ({', '.join(routes) or 'imported by archer only'}; workers get "
                "VERL_USE_EXTERNAL_MODULES through ray_init.runtime_env)",
            )
        )
    return rows


def check_agent(composed: Any) -> None:
    """agent.enable on verl runs archer's agent loop (agent_loop.py) with the hf rollout; what it
    cannot run yet is refused here, before Ray (archer.core.agent.engine.check_config)."""
    if composed.cfg.agent.enable:
        from archer.core.agent.engine import check_config

        check_config(composed.cfg)


def influence_warnings(vc: Any) -> list[str]:
    """Influence assumes one set of weights per step (docs/influence.md)."""
    s = vc.select
    if not s("archer.influence.enable"):
        return []
    out = []
    if int(s("actor_rollout_ref.actor.ppo_epochs")) != 1 or int(
        s("actor_rollout_ref.actor.ppo_mini_batch_size")
    ) < int(s("data.train_batch_size")):
        out.append(
            "influence traces the first epoch's mini-batches, each at its own weights; "
            "actor.ppo_epochs=1 and actor.ppo_mini_batch_size=data.train_batch_size keep one set "
            "(the math-influence preset does)"
        )
    return out


@dataclass
class DryRun:
    """What `archer train --dry-run` shows for a verl preset (rendered by the CLI)."""

    config_yaml: str  # the composed verl config (archer's own config when verl is absent)
    plan: list[tuple[str, str]] = field(default_factory=list)  # (label, value) lines
    warnings: list[str] = field(default_factory=list)
    verl_installed: bool = True
    set_yaml: str = ""  # only the verl keys archer and the verl.* settings set (the short form)


def dry_run(composed: Any, run_dir: Path) -> DryRun:
    """The composed verl config, the plan and what would stop or worry a real run; starts
    nothing (no Ray)."""
    missing = composed.missing()
    not_set = [f"not set yet (required before training): {', '.join(missing)}"] if missing else []
    if importlib.util.find_spec("verl") is None:  # still useful: archer's side of the config
        return DryRun(
            composed.to_yaml(resolve=True),
            warnings=[
                "verl is not installed, so its config cannot be composed: pip install -e '.[verl]'",
                *not_set,
            ],
            verl_installed=False,
        )
    from omegaconf import OmegaConf

    from archer.core.engines.verl import plugin
    from archer.core.engines.verl.inputs import plan_inputs

    inputs = plan_inputs(composed.cfg, run_dir)
    for key, value in (("data.train_files", inputs.train_files), ("data.val_files", inputs.val_files)):
        if value:
            OmegaConf.update(composed.cfg, key, value, merge=False)
    if inputs.model_path is not None:
        OmegaConf.update(composed.cfg, "model.path", inputs.model_path, merge=False)
    vc = prepare(composed, run_dir)
    if not missing:  # what a real run would stop on before Ray, except the rollout engine's absence
        planned = [inputs.model_path, *inputs.train_files, *inputs.val_files] if inputs.made else []
        check_inputs(vc, will_make=[p for p in planned if p and not Path(p).exists()])
        check_attention(vc)
    warnings = influence_warnings(vc)
    if (
        composed.cfg.trainer.device == "auto"
        and composed.cfg.rollout.backend == "hf"
        and not accelerator_present()
    ):
        warnings.append("no GPU here: 'archer train' would run this on the CPUs (trainer.device=cpu)")
    if composed.cfg.agent.enable:
        from archer.errors import ConfigError

        try:
            check_agent(composed)
        except ConfigError as e:
            warnings.append(f"{e} ('archer train' without --dry-run refuses this config)")
    return DryRun(
        vc.to_yaml(),
        plan_rows(vc, run_dir, plugin.status(), inputs),
        warnings + not_set,
        set_yaml=set_keys_yaml(vc),
    )


def set_keys_yaml(vc: Any) -> str:
    """The verl keys this run sets (archer's mapping and the verl.* settings), with the values verl
    will see, as nested YAML: the part of the composed config a user wrote."""
    from omegaconf import OmegaConf

    from archer.core.collect.runs import flatten
    from archer.core.engines.verl.config import ENGINE_DEFAULTS

    keys = [*ENGINE_DEFAULTS, *flatten({k: v for k, v in vc.mapped.items() if k != "archer"})]
    keys += [k for k, *_ in vc.overrides]
    picked = OmegaConf.create({})
    for key in dict.fromkeys(keys):
        value = OmegaConf.select(vc.cfg, key, throw_on_missing=False)
        OmegaConf.update(picked, key, value, force_add=True)
    return OmegaConf.to_yaml(picked, resolve=True)


def _preflight(vc: Any) -> None:
    from archer.core.engines.verl import plugin

    try:
        plugin.register()
        plugin.register_trainer()
    except Exception as e:
        raise ArcherError(
            f"archer's verl plugin did not register: {type(e).__name__}: {e}",
            hint="archer env shows what is installed",
        ) from e
    check_rollout_installed(vc.select("actor_rollout_ref.rollout.name"))


def check_rollout_installed(engine: Any) -> None:
    """Refuse a rollout engine whose package is missing, before Ray starts."""
    if not rollout_installed(engine):
        raise ArcherError(
            f"the verl engine rolls out with {engine}, which is not installed here",
            hint="run on a GPU node with pip install -e '.[verl,vllm]', or here with archer's own "
            "rollout: rollout.backend=hf (add trainer.device=cpu without a GPU); "
            "'archer train ... --dry-run' checks the config on any machine",
        )


def refuse_early(composed: Any) -> None:
    """The refusals that need neither the run directory nor verl's config: said before
    `archer train` takes the run's lock, so a refused run leaves no folder behind."""
    check_agent(composed)


def train(
    composed: Any, run_dir: Path, resume: bool = False, reporter: Reporter | None = None
) -> TrainResult:
    """Run the composed config on verl: Ray (local, or the cluster `ray start` made), archer's
    task runner pinned to this node, `archer_sync` inside. The trainer runs in a Ray actor, so
    the driver follows the run's metrics.jsonl to report each validation as it happens."""
    import time

    from archer.core.engines.verl.inputs import make_inputs
    from archer.core.metrics import MetricsFollower, read_metrics, validation_rows
    from archer.core.run import atomic_write_text, write_run_files

    t0 = time.perf_counter()
    reporter = reporter or Reporter()
    check_agent(composed)
    note = resolve_device(composed)
    if note:
        reporter.note(note)
    cache_dir = Path(composed.cfg.trainer.cache_dir or Path(composed.cfg.trainer.out_dir) / ".cache")
    steps = int(composed.cfg.warmup.steps)
    threads = int(composed.cfg.trainer.num_threads)
    if threads > 0:  # the tiny model's warm-up runs here, in the driver (Ray's workers keep their own)
        import torch

        torch.set_num_threads(threads)
    try:
        inputs = make_inputs(
            composed.cfg,
            run_dir,
            cache_dir=cache_dir,
            on_warmup_step=lambda i, loss: reporter.warmup_progress(i, steps, loss),
            on_warmup_wait=lambda holder: reporter.note(
                f"warm-up: waiting for {holder}, which is building the same warm-up (trainer.cache_dir)"
            ),
        )
    finally:
        reporter.warmup_done()
    for m in inputs.made:
        reporter.note(f"made by archer: {m}")
    vc = prepare(composed, run_dir, resume=resume)
    check_inputs(vc)
    check_attention(vc)
    _preflight(vc)
    for w in influence_warnings(vc):
        reporter.note(f"warning: {w}")
    for n in vc.tracker_notes:
        reporter.note(n)
    write_run_files(run_dir, composed, resumed=resume)
    atomic_write_text(Path(run_dir) / VERL_CONFIG_FILE, vc.to_yaml())
    reporter.note(f"verl config: {Path(run_dir) / VERL_CONFIG_FILE}")

    from verl.trainer.main_ppo import run_ppo
    from verl.utils.device import auto_set_device

    from archer.core.engines.verl.runner import pinned_runner

    auto_set_device(vc.cfg)
    past = [int(r.get("step", 0)) for r in read_metrics(run_dir)] if resume else []
    follower = MetricsFollower(
        run_dir,
        lambda row: reporter.validated(int(row["step"]), row) if "val/accuracy" in row else None,
        after_step=max(past, default=-1),
    ).start()
    t1 = time.perf_counter()
    try:
        run_ppo(vc.cfg, task_runner_class=pinned_runner)
    finally:
        follower.stop()
    t2 = time.perf_counter()
    vals = validation_rows(read_metrics(run_dir))
    trace = Path(run_dir) / "trace"
    return TrainResult(
        run_dir=Path(run_dir),
        setup_seconds=t1 - t0,
        train_seconds=t2 - t1,
        first_val=vals[0] if vals and int(vals[0].get("step", -1)) == 0 else {},  # before training
        last_val=vals[-1] if vals and int(vals[-1].get("step", 0)) > 0 else {},
        trace_dir=trace if trace.is_dir() else None,
        warmup_source="",
    )
