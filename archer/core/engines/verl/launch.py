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

from archer.core.progress import Reporter
from archer.errors import ArcherError

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
    """`trainer.device=auto` becomes cpu (with the hf rollout) on a machine without a GPU, so
    `archer train` runs verl here; returns a note saying so, or None."""
    from omegaconf import OmegaConf

    cfg = composed.cfg
    if cfg.trainer.device != "auto" or accelerator_present():
        return None
    OmegaConf.update(cfg, "trainer.device", "cpu", merge=False)
    note = "no GPU here: verl runs on this machine's CPUs (trainer.device=cpu, archer's CPU platform)"
    if cfg.rollout.backend != "hf":
        OmegaConf.update(cfg, "rollout.backend", "hf", merge=False)
        note += "; rollout.backend=hf"
    return note


def prepare(composed: Any, run_dir: Path, *, resume: bool = False) -> Any:
    """The verl config this run would use, checked by archer and by verl (imports verl)."""
    from archer.core.engines.verl.config import apply_runtime_env, check_with_verl, compose_verl

    vc = compose_verl(composed, run_dir, resume=resume)
    apply_runtime_env(vc, run_dir)
    check_with_verl(vc)
    return vc


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
        ("  metrics", f"{Path(run_dir) / 'metrics.jsonl'}; trackers {', '.join(s('trainer.logger'))}"),
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


AGENT_WAITS = (
    "agent.enable=true: the verl engine does not run multi-turn tool rollouts yet (they need a verl "
    "AgentLoopWorker; docs/agentic.md, 'What waits for verl')"
)


def refuse_agent(composed: Any) -> None:
    """Agent rollouts run on the local engine only: refuse instead of silently training without tools."""
    if composed.cfg.agent.enable:
        from archer.errors import ConfigError

        raise ConfigError(
            AGENT_WAITS,
            hint="run the same settings on the local engine: add engine=local "
            "(small models), or agent.enable=false for plain GRPO on verl",
        )


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
    warnings = influence_warnings(vc)
    if composed.cfg.trainer.device == "auto" and not accelerator_present():
        warnings.append(
            "no GPU here: 'archer train' would run this on the CPUs (trainer.device=cpu, rollout.backend=hf)"
        )
    if composed.cfg.agent.enable:
        warnings.append(AGENT_WAITS + "; 'archer train' without --dry-run refuses this config")
    return DryRun(vc.to_yaml(), plan_rows(vc, run_dir, plugin.status(), inputs), warnings + not_set)


def _preflight(vc: Any) -> None:
    from archer.core.engines.verl import plugin

    try:
        plugin.register()
    except Exception as e:
        raise ArcherError(
            f"archer's verl plugin did not register: {type(e).__name__}: {e}",
            hint="archer env shows what is installed",
        ) from e
    engine = vc.select("actor_rollout_ref.rollout.name")
    if not rollout_installed(engine):
        raise ArcherError(
            f"the verl engine rolls out with {engine}, which is not installed here",
            hint="run on a GPU node with pip install -e '.[verl,vllm]'; "
            "'archer train ... --dry-run' checks the config on any machine",
        )


def train(composed: Any, run_dir: Path, resume: bool = False, reporter: Reporter | None = None) -> None:
    """Run the composed config on verl: Ray (local, or the cluster `ray start` made), archer's
    task runner pinned to this node, `archer_sync` inside."""
    from archer.core.engines.verl.inputs import make_inputs
    from archer.core.run import atomic_write_text, write_run_files

    reporter = reporter or Reporter()
    refuse_agent(composed)
    note = resolve_device(composed)
    if note:
        reporter.note(note)
    cache_dir = Path(composed.cfg.trainer.cache_dir or Path(composed.cfg.trainer.out_dir) / ".cache")
    steps = int(composed.cfg.warmup.steps)
    try:
        inputs = make_inputs(
            composed.cfg,
            run_dir,
            cache_dir=cache_dir,
            on_warmup_step=lambda i, loss: reporter.warmup_progress(i, steps, loss),
        )
    finally:
        reporter.warmup_done()
    for m in inputs.made:
        reporter.note(f"made by archer: {m}")
    vc = prepare(composed, run_dir, resume=resume)
    _preflight(vc)
    for w in influence_warnings(vc):
        reporter.note(f"warning: {w}")
    write_run_files(run_dir, composed, resumed=resume)
    atomic_write_text(Path(run_dir) / VERL_CONFIG_FILE, vc.to_yaml())
    reporter.note(f"verl config: {Path(run_dir) / VERL_CONFIG_FILE}")

    from verl.trainer.main_ppo import run_ppo
    from verl.utils.device import auto_set_device

    from archer.core.engines.verl.runner import pinned_runner

    auto_set_device(vc.cfg)
    run_ppo(vc.cfg, task_runner_class=pinned_runner)
