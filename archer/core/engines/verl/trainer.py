"""`archer_sync`: verl's synchronous V1 trainer with archer's workers, influence plan and trace.

Per step, on top of `PPOTrainerSync`:
  - before the actor update, the driver reads rewards and advantages from TransferQueue, selects
    the prompt groups to trace (archer.influence.selection) and writes the per-row fields
    `archer_row/_group/_accepted/_sign` next to the rows, so they travel with every row through
    verl's balancing, shuffling, dynamic batching and the DP split;
  - the workers capture influence inside the real update (archer/core/engines/verl/capture.py);
  - after it, the driver collects each rank's scores by row id and writes the step's trace
    (entropy from the old-log-prob pass, which verl keeps in TransferQueue for the whole step)
    with archer's background `TraceWriter` — the same parquet columns as the local engine.

The `archer` section of the config (added by `archer train`) carries the run directory, trace and
influence settings and the loss knobs; without it the trainer traces entropy only, next to the
checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import ray
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from archer.core.engines.verl.steps import (
    agent_metrics,
    agent_summaries,
    as_list,
    correct_flags,
    merge_influence,
    nested_rows,
    padding_mask,
    plan_influence,
    step_record,
    val_accuracy,
)
from archer.core.rollout.record import TOKENIZER_DIR, open_trace, sequence_advantages, trace_summary

log = logging.getLogger("archer.verl")

TRACE_FIELDS = ["prompts", "responses", "response_mask", "entropy", "advantages", "rm_scores"]
OPTIONAL_TRACE_FIELDS = ["data_source", "extra_fields"]
ACTOR_ROLES = (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor)
POLL_INTERVAL_S = 0.25


def archer_section(config: Any) -> dict:
    """The `archer` section as a plain dict (defaults when verl was started without archer)."""
    section = OmegaConf.to_container(config.archer, resolve=True) if "archer" in config else {}
    section.setdefault("run_dir", os.path.dirname(os.path.abspath(str(config.trainer.default_local_dir))))
    section.setdefault("trace", {"enable": True})
    section.setdefault("influence", {"enable": False})
    section.setdefault("loss_knobs", {})
    return section


@register_trainer("archer_sync")
class ArcherTrainer(PPOTrainerSync):
    """PPOTrainerSync + archer's worker, influence plan, capture results and trace."""

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        from archer.core.engines.verl.worker import ArcherActorRolloutRefWorker

        for role in ACTOR_ROLES:
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(ArcherActorRolloutRefWorker)
        from archer.core.engines.verl.cpu_platform import active, check_cpu_resources

        if active():  # verl counts GPUs only; on CPUs a "GPU" of the pool is one Ray CPU
            manager = self.resource_pool_manager
            manager._check_resource_available = lambda: check_cpu_resources(manager.resource_pool_spec)

    def _build_replay_buffer(self):
        """verl polls TransferQueue for finished rollouts every 2 s, so a step's generation time is
        rounded up to 2 s; poll every 0.25 s (small models and the CPU path finish in less)."""
        buffer = super()._build_replay_buffer()
        if hasattr(buffer, "poll_interval"):
            buffer.poll_interval = min(float(buffer.poll_interval), POLL_INTERVAL_S)
        return buffer

    def _init_dataloader(self):
        """verl's dataloaders, then: at least one batch of prompts survived verl's length filter
        (its fit() divides by len(data) // batch size)."""
        super()._init_dataloader()
        from archer.core.engines.verl.launch import check_batch_fits

        check_batch_fits(
            len(self.train_dataset),
            int(self.config.data.train_batch_size),
            filtered=bool(self.config.data.get("filter_overlong_prompts", False)),
            max_prompt_length=int(self.config.data.max_prompt_length),
        )

    def _setup(self):
        if self.config.actor_rollout_ref.rollout.name == "vllm" and "agent" in self.config.get("archer", {}):
            from archer.core.engines.verl.rollout_vllm import install

            install()  # vLLM servers that return top-k entropies for archer's agent loop
        super()._setup()
        from archer.influence.settings import InfluenceSettings

        self.archer = archer_section(self.config)
        infl = self.archer["influence"]
        self.archer_influence = InfluenceSettings.from_mapping(infl) if infl.get("enable") else None
        payload = {
            "loss_knobs": self.archer["loss_knobs"],
            "influence": infl if self.archer_influence is not None else None,
        }
        replies = self.actor_rollout_wg.archer_setup(payload)
        modules = next((r["influence_modules"] for r in replies if r), [])
        if self.archer_influence is not None:
            log.warning("archer: influence traced on %d modules: %s", len(modules), ", ".join(modules))
        self.archer_trace = self._open_trace()
        self.archer_metrics = self._open_metrics()

    def _open_metrics(self):
        """archer's metrics.jsonl (the format `archer collect` reads); verl's trackers log the same
        numbers to the console, tensorboard or W&B."""
        from pathlib import Path

        from archer.core.metrics import MetricsLog

        run_dir = Path(self.archer["run_dir"])
        if self.config.trainer.resume_mode != "disable":
            MetricsLog.truncate(run_dir, int(self.global_steps))
        return MetricsLog(run_dir)

    def _open_trace(self):
        """The trace writer, with the same summary fields as the local engine (the tokenizer is
        saved to `<run>/tokenizer` so the viewer decodes the trace from the run alone)."""
        tcfg = self.archer["trace"]
        if not tcfg.get("enable", True):
            return None
        run_dir = self.archer["run_dir"]
        tok_dir = os.path.join(run_dir, TOKENIZER_DIR)
        if getattr(self, "tokenizer", None) is not None and not os.path.isdir(tok_dir):
            self.tokenizer.save_pretrained(tok_dir)
        resumed = self.config.trainer.resume_mode != "disable"
        summary = trace_summary(
            engine="verl",
            preset=self.archer.get("preset"),
            run_dir=run_dir,
            model_path=self.config.actor_rollout_ref.model.path,
            rollout_n=int(self.config.actor_rollout_ref.rollout.n),
            influence=self.archer["influence"] if self.archer_influence is not None else None,
            agent=self._archer_agent_summary(),
        )
        writer = open_trace(tcfg, run_dir, summary, resume_after_step=self.global_steps if resumed else None)
        log.warning("archer: writing the per-token trace to %s", writer.dir)
        return writer

    def _archer_agent_summary(self) -> dict | None:
        """agent.enable: the algorithm and tools, as the local engine's trace summary has them."""
        agent = self.archer.get("agent")
        if not agent or not agent.get("enable"):
            return None
        tools = [name for name in ("python", "search") if agent["tools"][name]["enable"]]
        return {"algorithm": agent["algorithm"], "tools": tools, "engine_loop": "verl agent loop"}

    def fit(self, agent_loop_manager):
        try:
            return super().fit(agent_loop_manager)
        finally:
            if getattr(self, "archer_trace", None) is not None:
                self.archer_trace.close()
            if getattr(self, "archer_metrics", None) is not None:
                self.archer_metrics.close()
            if getattr(self, "_archer_sinks", None) is not None:
                self._archer_sinks.close(finish_wandb=False)  # verl's tracker finishes its run

    def _save_checkpoint(self):
        """Deferred to `_compute_metrics`, after the step's line: verl saves before it validates
        and records the step, so a crash between the two left a checkpoint whose step (and
        validation) a resume never logs again. Outside the step loop it saves at once."""
        if getattr(self, "_archer_in_step", False):
            self._archer_save_due = True
            return None
        return self._archer_save_now()

    def _archer_save_now(self):
        """Flush the trace first: a step verl has checkpointed (and a resume starts after) must
        already be on disk, or a crash right after the checkpoint loses it for good."""
        if getattr(self, "archer_trace", None) is not None:
            self.archer_trace.flush()
        return super()._save_checkpoint()

    def step(self, *args, **kwargs):
        self._archer_in_step, self._archer_save_due = True, False
        return super().step(*args, **kwargs)

    def _validate(self, *args, **kwargs):
        """verl's validation, plus `val/accuracy` (the number both engines log, `archer collect`
        tabulates and the run summary compares)."""
        val_metrics = super()._validate(*args, **kwargs)
        acc = val_accuracy(val_metrics or {})
        if acc is not None:
            val_metrics["val/accuracy"] = acc
            n = len(getattr(self, "val_dataset", None) or ())
            if n:  # the run summary judges a change of accuracy against the noise of n problems
                val_metrics["val/prompts"] = float(n)
        if int(self.global_steps) == 0 and val_metrics:  # before training; later ones join the step's line
            self.archer_metrics.log(0, val_metrics)
        return val_metrics

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        """The step's line, then the checkpoint verl asked for during the step (`_save_checkpoint`);
        its time reaches verl's trackers, which log `metrics` after this."""
        super()._compute_metrics(batch, metrics, timing_raw, global_steps=global_steps, epoch=epoch)
        due = getattr(self, "_archer_save_due", False)
        self._archer_in_step = self._archer_save_due = False
        if due:
            metrics.pop("timing_s/save_checkpoint", None)  # the deferred call's ~0 s
        self.archer_metrics.log(int(global_steps), metrics)
        if due:
            t0 = time.perf_counter()
            self._archer_save_now()
            metrics["timing_s/save_checkpoint"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ one step
    def _update_actor(self, batch, metrics):
        t0 = time.perf_counter()
        plan = self._archer_plan(batch, metrics) if self.archer_influence is not None else None
        t1 = time.perf_counter()
        batch = super()._update_actor(batch, metrics)
        t2 = time.perf_counter()
        influence = None
        if plan is not None and plan.active:
            influence, infl_metrics = merge_influence(self.actor_rollout_wg.archer_take_influence())
            metrics.update(infl_metrics)
        if plan is not None:
            metrics["influence/groups_constant"] = float(plan.constant_groups)
        self._archer_write_trace(batch, plan, influence)
        t3 = time.perf_counter()
        if plan is not None:
            metrics["time/influence"] = (t1 - t0) + (t3 - t2)
        metrics.update(self._archer_agent_metrics(batch))
        return batch

    def _archer_agent_metrics(self, batch) -> dict[str, float]:
        """agent.enable: branches, tool calls, errors, budget fill, ΔH at the branch points."""
        agent = getattr(self, "archer", {}).get("agent")
        if not agent or not agent.get("enable"):
            return {}
        extra = self._archer_optional(batch, "extra_fields")
        summaries = agent_summaries(as_list(extra) if extra is not None else None, len(batch.keys))
        if summaries is None:
            return {}
        n = int(self.config.actor_rollout_ref.rollout.n)
        return agent_metrics(batch.keys, padding_mask(batch.keys, batch.tags), summaries, n)

    def _archer_plan(self, batch, metrics):
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["rm_scores", "advantages", "response_mask"],
        )
        rewards = np.array(
            [float(np.asarray(r, dtype=np.float64).sum()) for r in nested_rows(data["rm_scores"])]
        )
        seq_adv = sequence_advantages(nested_rows(data["advantages"]), nested_rows(data["response_mask"]))
        padding = padding_mask(batch.keys, batch.tags)
        extra = self._archer_optional(batch, "extra_fields")
        correct = correct_flags(as_list(extra) if extra is not None else None, len(batch.keys))
        plan = plan_influence(batch.keys, padding, rewards, seq_adv, self.archer_influence, correct=correct)
        fields = TensorDict(
            {k: torch.from_numpy(v) for k, v in plan.fields.items()}, batch_size=len(batch.keys)
        )
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
        if batch.fields is not None:  # a meta that names its fields limits what the workers fetch
            batch.fields = list(dict.fromkeys([*batch.fields, *plan.fields]))
        batch.extra_info["archer_influence"] = plan.active
        return plan

    def _archer_optional(self, batch, name: str):
        """A field the rows may lack (data_source, extra_fields), or None (said once)."""
        missing = self.__dict__.setdefault("_archer_missing_fields", set())
        if name in missing:
            return None
        try:
            extra = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[name])
            return extra[name]
        except Exception as e:  # noqa: BLE001 - the column is optional; say once why it stays empty
            missing.add(name)
            log.warning("archer: the rows carry no %r (%s); the trace leaves that column empty", name, e)
            return None

    def _archer_write_trace(self, batch, plan, influence) -> None:
        writer = self.archer_trace
        step = int(self.global_steps)
        if writer is None or not writer.should_write(step):
            return
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=TRACE_FIELDS)
        for name in OPTIONAL_TRACE_FIELDS:
            value = self._archer_optional(batch, name)
            if value is not None:
                data[name] = value
        record = step_record(
            batch.keys,
            padding_mask(batch.keys, batch.tags),
            data,
            max_response_length=int(self.config.data.max_response_length),
            influence=influence if plan is not None else None,
            accepted=plan.accepted if plan is not None else None,
        )
        writer.submit(step, record.table(step))
        self._archer_histograms(step, record)

    def _archer_histograms(self, step: int, record) -> None:
        """Entropy and influence histograms of a traced step (trainer.logging.histograms_every) to
        the tensorboard folder and the W&B run of verl's own tracker (verl logs scalars only)."""
        every = int((self.archer.get("logging") or {}).get("histograms_every", 0))
        if every <= 0 or step % every:
            return
        from archer.core.metrics import Sinks, record_histograms

        sinks = self.__dict__.get("_archer_sinks")
        if sinks is None:
            loggers = list(self.config.trainer.logger or [])
            tb = wb = None
            if "tensorboard" in loggers:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(
                    os.environ.get("TENSORBOARD_DIR") or os.path.join(self.archer["run_dir"], "tensorboard")
                )
            if "wandb" in loggers:
                import wandb

                wb = wandb if wandb.run is not None else None
            sinks = self._archer_sinks = Sinks(tb, wb)
        sinks.histograms(step, record_histograms(record))
        sinks.flush()
