"""The local engine: one process, CPU or one GPU, HF `generate` rollouts and archer's own PPO math.

Per step (`LocalTrainer.step`, which reads as the algorithm): roll out n responses per prompt and
reward them (with DAPO dynamic sampling, until enough groups have contrast), add the overlong
penalty, compute advantages, take old log-probs and per-token entropy (from the update's own
forward when the step is on-policy), plan and capture influence, run the PPO update, hand the
step to the trace, and checkpoint. Generation, prompts and the trace record live below every
engine (archer.core.rollout); the warm-up and its cache in warmup.py; this file never prints
(events go to a `archer.core.progress.Reporter`).
"""

from __future__ import annotations

import dataclasses
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archer.core.engines.local import checkpoint as ckpt
from archer.core.engines.local.evaluation import evaluate
from archer.core.engines.local.forward import step_logprobs
from archer.core.engines.local.update import UpdateBatch, ppo_update
from archer.core.interrupt import StopRequest
from archer.core.metrics import MetricsLog
from archer.core.progress import Reporter, RunInfo, TrainResult
from archer.core.rollout.batch import Rollout, concat_rollouts
from archer.core.rollout.generation import decode_responses, generate
from archer.core.rollout.prompts import Prompt, PromptSampler, load_datasets
from archer.core.rollout.record import (
    TOKENIZER_DIR,
    StepRecord,
    open_trace,
    sequence_advantages,
    trace_summary,
)
from archer.core.run import write_run_files
from archer.core.warmup import WarmupResult, prepare_warmup
from archer.errors import ArcherError, Interrupted


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ArcherError(
                "trainer.device=cuda but no CUDA GPU is visible", hint="use trainer.device=cpu or auto"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class StepBatch:
    """One step's scored rollout, before the update (kept for the trace and metrics)."""

    rollout: Rollout
    prompts: list[Prompt]  # one per group
    rewards: torch.Tensor  # [B] after shaping
    correct: list[bool]
    texts: list[str]
    rounds: int = 1
    groups_seen: int = 0
    groups_dropped: int = 0
    token_role: list[np.ndarray] | None = None  # agent mode: ROLE_* codes per response token
    extra_metrics: dict[str, float] | None = None

    def uids(self) -> list[str]:
        return [f"p{self.prompts[g].index}-g{g}" for g in self.rollout.group]

    def sequence_advantages(self, advantages: torch.Tensor) -> np.ndarray:
        """Per response: mean token advantage over the tokens that receive gradient."""
        ro = self.rollout
        lengths = ro.response_lengths.tolist()
        adv, mask = advantages.numpy(), ro.train_mask.numpy()
        return sequence_advantages(
            [adv[i, :L] for i, L in enumerate(lengths)], [mask[i, :L] for i, L in enumerate(lengths)]
        )

    def record(
        self,
        entropy: torch.Tensor,
        advantages: torch.Tensor,
        influence: list | None = None,
        accepted: list | None = None,
    ) -> StepRecord:
        """The step as the trace sees it (archer.core.rollout.record)."""
        ro = self.rollout
        lengths = ro.response_lengths.tolist()
        resp, ent, adv, mask = (t.numpy() for t in (ro.response_ids, entropy, advantages, ro.train_mask))
        return StepRecord(
            uid=self.uids(),
            group_index=list(ro.group),
            sample_index=list(ro.sample),
            prompt_ids=[ro.prompt_ids[i][ro.prompt_mask[i].bool()].numpy() for i in range(ro.size)],
            response_ids=[resp[i, :L] for i, L in enumerate(lengths)],
            entropy=[ent[i, :L] for i, L in enumerate(lengths)],
            advantages=[adv[i, :L] for i, L in enumerate(lengths)],
            loss_mask=[mask[i, :L] for i, L in enumerate(lengths)],
            reward=self.rewards.numpy(),
            truncated=ro.truncated.numpy(),
            correct=self.correct,
            accepted=accepted,
            influence=influence,
            data_source=[self.prompts[g].data_source for g in ro.group],
            token_role=self.token_role,
        )


class LocalTrainer:
    """Owns the model, optimizer, data order, trace writer and metrics of one local run."""

    def __init__(
        self, composed: Any, run_dir: Path, *, resume: bool = False, reporter: Reporter | None = None
    ):
        self.composed = composed
        self.cfg = composed.cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.reporter = reporter or Reporter()
        self.global_step = 0
        self.trace = None
        self.trace_dir: Path | None = None
        self.metrics_log: MetricsLog | None = None
        self.first_val: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.setup_seconds = 0.0
        self.warmup = WarmupResult(None, "off")

    # ------------------------------------------------------------------ setup
    def setup(self) -> LocalTrainer:
        t0 = time.time()
        cfg = self.cfg
        if cfg.trainer.num_threads > 0:
            torch.set_num_threads(int(cfg.trainer.num_threads))
        seed_everything(int(cfg.seed))
        self.device = pick_device(cfg.trainer.device)
        write_run_files(self.run_dir, self.composed, resumed=self.resume)
        self.cache_dir = Path(cfg.trainer.cache_dir or Path(cfg.trainer.out_dir) / ".cache").expanduser()

        from archer.core.models.loading import load_policy, load_tokenizer

        self.tokenizer = load_tokenizer(cfg.model)
        self.agent = None
        if cfg.agent.enable:  # agent mode: tool task data first (load_datasets then finds it), tools next
            from archer.core.agent.engine import check_config, prepare_task_data

            check_config(cfg)
            prepare_task_data(cfg, self.run_dir / "data")
        self.train_prompts, self.val_prompts, self.data_counts = load_datasets(
            cfg, self.tokenizer, self.run_dir
        )
        if cfg.agent.enable:
            from archer.core.agent.engine import AgentRunner

            self.agent = AgentRunner(cfg, self.tokenizer, self.run_dir, self.cache_dir, self.device)
            self.agent.note = self.reporter.note
        self.val_prompts = self.val_prompts[: cfg.rollout.val.max_prompts or None]
        self.sampler = PromptSampler(
            len(self.train_prompts), seed=int(cfg.seed), shuffle=bool(cfg.data.shuffle)
        )

        resume_from = ckpt.latest_checkpoint(self.run_dir) if self.resume else None
        if self.resume and resume_from is None:
            self.reporter.note("no checkpoint found in the run: starting again from the beginning")
        self.warmup = self._warmup()
        start_weights = self.warmup.path  # None: model.path or the tiny model's init
        self.model, _ = load_policy(cfg, init_from=resume_from or start_weights)
        self.model.to(self.device)
        self.ref_model = None
        if cfg.actor.use_kl_loss:
            self.ref_model, _ = load_policy(cfg, init_from=start_weights)
            self.ref_model.to(self.device).eval()
            self.ref_model.requires_grad_(False)
        if not (self.run_dir / TOKENIZER_DIR).exists():
            self.tokenizer.save_pretrained(self.run_dir / TOKENIZER_DIR)

        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.actor.optim.lr,
            betas=tuple(cfg.actor.optim.betas),
            weight_decay=cfg.actor.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda())
        if resume_from is not None:
            self._restore(resume_from)
        elif self.resume:  # stopped before its first checkpoint: start over, step 0 included
            MetricsLog.truncate(self.run_dir, -1)

        self.influence = None
        if cfg.influence.enable:
            from archer.core.engines.local.influence_step import LocalInfluence

            self.influence = LocalInfluence(self.model, cfg.influence)
            mini_batches = cfg.data.train_batch_size // cfg.actor.ppo_mini_batch_size
            if self.influence.settings.output.in_training_backward and (
                cfg.actor.ppo_epochs > 1 or mini_batches > 1
            ):
                self.reporter.note(
                    "influence: captured in the first PPO epoch across "
                    f"{mini_batches} mini-batch(es); scores assume one set of weights, so "
                    "actor.ppo_epochs=1 and one mini-batch per step are recommended"
                )
        self.metrics_log = MetricsLog(
            self.run_dir,
            logging_cfg=cfg.trainer.logging,
            run_name=self.run_dir.name,
            config=self.composed.to_dict(),
        )
        if cfg.trace.enable:
            self._open_trace(resume_after_step=self.global_step if self.resume else None)
        self.setup_seconds = time.time() - t0
        self.reporter.run_started(self.info())
        return self

    def info(self) -> RunInfo:
        return RunInfo(
            engine="local",
            preset=self.composed.preset,
            run_dir=str(self.run_dir),
            device=str(self.device),
            parameters=sum(p.numel() for p in self.model.parameters()),
            n_train=int(self.data_counts["train"]),
            n_val=len(self.val_prompts),
            details=[self.agent.describe()] if self.agent is not None else [],
        )

    def _warmup(self) -> WarmupResult:
        try:
            result = prepare_warmup(
                self.cfg,
                self.run_dir,
                self.cache_dir,
                self.train_prompts,
                device=self.device,
                demos=(lambda: self.agent.demonstrations(self.train_prompts))
                if self.agent is not None
                else None,
                on_step=lambda i, loss: self.reporter.warmup_progress(i, int(self.cfg.warmup.steps), loss),
                on_wait=lambda holder: self.reporter.note(
                    f"warm-up: waiting for {holder}, which is building the same warm-up (trainer.cache_dir)"
                ),
            )
        finally:
            self.reporter.warmup_done()
        if result.source == "cache":
            self.reporter.note("warm-up: reused the cached result (trainer.cache_dir)")
        elif result.source == "trained":
            self.reporter.note(
                f"warm-up: {int(result.stats['warmup/steps'])} steps in {result.seconds:.1f}s "
                f"(final loss {result.stats['warmup/final_loss']:.3f}"
                + (
                    f", probe accuracy {result.stats['warmup/probe_accuracy']:.2f}"
                    if "warmup/probe_accuracy" in result.stats
                    else ""
                )
                + ")"
            )
        return result

    def _restore(self, resume_from: Path) -> None:
        state = ckpt.load_trainer_state(resume_from)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.global_step = int(state["step"])
        self.first_val = state.get("first_val", {})
        ckpt.set_rng_state(state["rng"])
        MetricsLog.truncate(self.run_dir, self.global_step)
        self.reporter.note(f"resumed from {resume_from.name} (step {self.global_step})")

    def _lr_lambda(self) -> Any:
        ocfg = self.cfg.actor.optim
        warm = int(ocfg.warmup_steps)
        per_step = self.cfg.actor.ppo_epochs * (
            self.cfg.data.train_batch_size // self.cfg.actor.ppo_mini_batch_size
        )
        total = max(1, self.cfg.trainer.total_steps * per_step)
        cosine = ocfg.schedule == "cosine"

        def f(i: int) -> float:
            if warm and i < warm:
                return (i + 1) / warm
            if cosine:
                import math

                return 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warm) / max(1, total - warm))))
            return 1.0

        return f

    def _open_trace(self, resume_after_step: int | None) -> None:
        cfg = self.cfg
        agent = None
        if self.agent is not None:
            agent = {
                "algorithm": str(cfg.agent.algorithm),
                "tools": list(self.agent.toolbox.available),
                "python_sandbox": self.agent.isolation,
            }
        summary = trace_summary(
            engine="local",
            preset=self.composed.preset,
            run_dir=self.run_dir,
            model_path=cfg.model.path,
            rollout_n=int(cfg.rollout.n),
            influence=dataclasses.asdict(self.influence.settings) if self.influence is not None else None,
            agent=agent,
        )
        self.trace = open_trace(cfg.trace, self.run_dir, summary, resume_after_step=resume_after_step)
        self.trace_dir = self.trace.dir

    # ------------------------------------------------------------------ one step
    def _sample(self) -> StepBatch:
        """Roll out and reward; with DAPO dynamic sampling, generate rounds until enough groups
        have contrast (`GroupAccumulator`)."""
        if self.agent is not None:
            return self._agent_sample()
        from archer.core.algorithms import GroupAccumulator

        cfg = self.cfg
        n, target = int(cfg.rollout.n), int(cfg.data.train_batch_size)
        fg = cfg.algorithm.filter_groups
        if not fg.enable:
            prompts = [self.train_prompts[i] for i in self.sampler.take(target)]
            ro = self._generate(prompts)
            texts, scores = self._score(ro, prompts)
            return self._scored(ro, prompts, texts, scores, groups_seen=len(prompts))
        acc, seen, last = GroupAccumulator(), 0, []
        while acc.should_continue(target, int(fg.max_num_gen_batches)):
            prompts = [self.train_prompts[i] for i in self.sampler.take(target)]
            ro = self._generate(prompts)
            texts, scores = self._score(ro, prompts)
            seen += len(prompts)
            rows = [[g * n + s for s in range(n)] for g in range(len(prompts))]
            last = [
                (ro.select(r), prompts[g], [texts[i] for i in r], [scores[i] for i in r])
                for g, r in enumerate(rows)
            ]
            acc.add(
                last, ro.group, [float(s.correct) if fg.metric == "acc" else float(s.reward) for s in scores]
            )
        kept = (
            acc.take(min(target, len(acc))) if len(acc) else last
        )  # all constant after the cap: train as is
        for sub, *_ in kept:
            sub.group = [0] * sub.size  # concat_rollouts numbers the groups
        return self._scored(
            concat_rollouts([k[0] for k in kept], int(self.tokenizer.pad_token_id)),
            [k[1] for k in kept],
            [t for k in kept for t in k[2]],
            [s for k in kept for s in k[3]],
            rounds=acc.rounds,
            groups_seen=seen,
            groups_dropped=acc.dropped_groups,
        )

    def _scored(
        self, ro: Rollout, prompts: list[Prompt], texts: list[str], scores: list[Any], **counts: int
    ) -> StepBatch:
        """The step batch, with DAPO's overlong penalty added to the rewards when configured."""
        from archer.core.algorithms import overlong_penalty

        rewards = torch.tensor([float(s.reward) for s in scores], dtype=torch.float32)
        ob = self.cfg.algorithm.overlong_buffer
        if ob.enable:
            rewards = rewards + overlong_penalty(
                ro.response_lengths.float(),
                max_response_length=int(self.cfg.rollout.max_new_tokens),
                buffer_len=int(ob.len),
                penalty_factor=float(ob.penalty_factor),
            )
        return StepBatch(ro, prompts, rewards, [bool(s.correct) for s in scores], texts, **counts)

    def _generate(self, prompts: list[Prompt]) -> Rollout:
        cfg = self.cfg
        return generate(
            self.model,
            self.tokenizer,
            [p.ids for p in prompts],
            n=int(cfg.rollout.n),
            max_new_tokens=int(cfg.rollout.max_new_tokens),
            temperature=float(cfg.rollout.temperature),
            top_p=float(cfg.rollout.top_p),
            top_k=int(cfg.rollout.top_k),
            batch_size=int(cfg.rollout.generation_batch_size),
            device=self.device,
            compile_decode=bool(cfg.rollout.compile_decode),
            pad_prompts_to=int(cfg.data.max_prompt_length),
        )

    def _score(self, ro: Rollout, prompts: list[Prompt]) -> tuple[list[str], list[Any]]:
        from archer.core.rewards import score_batch

        texts = decode_responses(self.tokenizer, ro)
        answers = [prompts[g].answer for g in ro.group]
        return texts, score_batch(
            self.cfg.reward.function, texts, answers, timeout_s=self.cfg.reward.timeout_s
        )

    def _agent_sample(self) -> StepBatch:
        """Agent mode: multi-turn tool rollouts with ARPO/AEPO branching, n trajectories per prompt."""
        from archer.core.rewards import score_batch

        cfg = self.cfg
        prompts = [self.train_prompts[i] for i in self.sampler.take(int(cfg.data.train_batch_size))]
        seed = int(cfg.seed) * 1_000_003 + self.global_step + 1
        ro, roles, texts, answers, batch = self.agent.rollout(self.model, prompts, seed=seed)
        scores = score_batch(
            cfg.reward.function,
            answers,
            [prompts[g].answer for g in ro.group],
            timeout_s=cfg.reward.timeout_s,
        )
        rewards = torch.tensor([float(s.reward) for s in scores], dtype=torch.float32)
        return StepBatch(
            ro,
            prompts,
            rewards,
            [bool(s.correct) for s in scores],
            texts,
            groups_seen=len(prompts),
            token_role=roles,
            extra_metrics=self.agent.step_metrics(batch),
        )

    def _advantages(self, sb: StepBatch) -> torch.Tensor:
        from archer.core.algorithms import get_adv_estimator

        ro = sb.rollout
        mask = ro.train_mask.float()  # agent mode: tool-result tokens get no advantage
        last = (ro.response_lengths - 1).clamp(min=0)
        token_rewards = torch.zeros_like(mask)
        token_rewards[torch.arange(ro.size), last] = sb.rewards
        adv, _ = get_adv_estimator(self.cfg.algorithm.adv_estimator)(
            token_rewards,
            mask,
            sb.uids(),
            norm_adv_by_std_in_grpo=bool(self.cfg.algorithm.norm_adv_by_std_in_grpo),
        )
        return adv * mask

    def step(self) -> dict[str, float]:
        """One RL step; returns its metrics (also traced)."""
        cfg = self.cfg
        step = self.global_step + 1
        temperature, micro = float(cfg.rollout.temperature), int(cfg.actor.ppo_micro_batch_size)
        t = {"start": time.perf_counter()}

        sb = self._sample()  # rollout, reward, dynamic-sampling filter
        ro = sb.rollout
        t["rollout"] = time.perf_counter()

        old_logp, entropy, ref_logp = step_logprobs(
            self.model, self.ref_model, ro, cfg, with_entropy=True, device=self.device
        )
        advantages = self._advantages(sb)
        t["logprob"] = time.perf_counter()

        hook = None
        if self.influence is not None:  # plan (groups with contrast) and, for other outputs, capture
            self.influence.begin(
                ro,
                sb.rewards,
                torch.from_numpy(sb.sequence_advantages(advantages)),
                sb.uids(),
                correct=sb.correct,
            )
            if self.influence.settings.output.in_training_backward:
                hook = self.influence.micro_hook
            else:
                self.influence.separate_backward(
                    advantages,
                    sb.rewards,
                    micro_batch_size=micro,
                    temperature=temperature,
                    device=self.device,
                )
        self._snapshot_for_check(step)  # counted in time/influence
        t["capture"] = time.perf_counter()

        actor_metrics, fused_entropy = ppo_update(
            self.model,
            self.optimizer,
            self.scheduler,
            UpdateBatch(rollout=ro, old_log_prob=old_logp, advantages=advantages, ref_log_prob=ref_logp),
            cfg.actor,
            group_size=int(cfg.rollout.n),
            temperature=temperature,
            device=self.device,
            micro_hook=hook,
        )
        entropy = fused_entropy if fused_entropy is not None else entropy
        t["update"] = time.perf_counter()

        influence_rows, accepted, infl_metrics = None, None, {}
        if self.influence is not None:
            accepted = self.influence.accepted
            influence_rows, infl_metrics = self.influence.finish()
        t["influence"] = time.perf_counter()

        traced = self.trace is not None and self.trace.should_write(step)
        logged = self.metrics_log is not None and self.metrics_log.wants_record(step)
        if traced or logged:  # the trace, and the sample generations / histograms of the sinks
            record = sb.record(entropy, advantages, influence_rows, accepted)
            if traced:
                self.trace.submit(step, record.table(step))
            if logged:
                self.metrics_log.log_record(step, record, self._decode)
        t["trace"] = time.perf_counter()

        self.global_step = step
        return self._metrics(sb, entropy, advantages, {**actor_metrics, **infl_metrics}, t)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _snapshot_for_check(self, step: int) -> None:
        """Keep the state going into this step's update when `influence.check_every` marks it (and
        the step is traced), for `archer influence check`."""
        every = int(self.cfg.influence.check_every)
        if self.influence is None or not every or step % every or self.trace is None:
            return
        if not self.trace.should_write(step):
            return
        ckpt.save_update_snapshot(
            self.run_dir,
            step,
            model=self.model,
            optimizer=self.optimizer,
            keep=int(self.cfg.influence.check_keep),
        )

    def _metrics(
        self, sb: StepBatch, entropy: torch.Tensor, advantages: torch.Tensor, extra: dict, t: dict[str, float]
    ) -> dict[str, float]:
        ro = sb.rollout
        mask = ro.response_mask.float()
        n_tok = float(mask.sum())
        metrics: dict[str, float] = {
            "reward/mean": float(sb.rewards.mean()),
            "reward/max": float(sb.rewards.max()),
            "reward/min": float(sb.rewards.min()),
            "reward/accuracy": float(np.mean(sb.correct)),
            "rollout/response_length_mean": float(ro.response_lengths.float().mean()),
            "rollout/truncated_frac": float(ro.truncated.float().mean()),
            "rollout/entropy_mean": float((entropy * mask).sum() / max(1.0, n_tok)),
            "rollout/tokens": n_tok,
            "rollout/groups": float(len(sb.prompts)),
            "rollout/gen_rounds": float(sb.rounds),
            "rollout/groups_dropped": float(sb.groups_dropped),
            "advantage/abs_mean": float((advantages.abs() * mask).sum() / max(1.0, n_tok)),
            **extra,
            **(sb.extra_metrics or {}),
        }
        metrics["actor/kl"] = metrics.get("actor/ppo_kl", float("nan"))
        metrics["time/rollout"] = t["rollout"] - t["start"]
        metrics["time/logprob"] = t["logprob"] - t["rollout"]
        metrics["time/update"] = t["update"] - t["capture"]
        metrics["time/trace"] = t["trace"] - t["influence"]
        if self.influence is not None:
            metrics["time/influence"] = (t["capture"] - t["logprob"]) + (t["influence"] - t["update"])
        metrics["time/step"] = t["trace"] - t["start"]
        metrics["perf/peak_cpu_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if self.device.type == "cuda":
            metrics["perf/peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return metrics

    # ------------------------------------------------------------------ loop
    def validate(self) -> dict[str, float]:
        v = self.cfg.rollout.val
        if self.agent is not None:
            return self.agent.validate(self.model, self.val_prompts, seed=int(self.cfg.seed) + 7)
        return evaluate(
            self.model,
            self.tokenizer,
            self.val_prompts,
            reward_fn=self.cfg.reward.function,
            n=int(v.n),
            temperature=float(v.temperature),
            top_p=float(v.top_p),
            max_new_tokens=int(self.cfg.rollout.max_new_tokens),
            timeout_s=float(self.cfg.reward.timeout_s),
            device=self.device,
        )

    def save(self) -> Path:
        if self.trace is not None:
            self.trace.flush()  # a checkpoint never gets ahead of the trace
        return ckpt.save_checkpoint(
            self.run_dir,
            self.global_step,
            model=self.model,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            extra={"sampler": self.sampler.state_dict(), "first_val": self.first_val},
            keep=int(self.cfg.trainer.keep_checkpoints),
        )

    def fit(self) -> dict[str, Any]:
        """The RL loop. Ctrl-C (SIGINT) is taken at a step boundary: the step under way finishes
        and is checkpointed, so `--resume` continues exactly as if never stopped; a second Ctrl-C
        stops at once and keeps only the last checkpoint (the half-done step is never saved)."""
        tcfg = self.cfg.trainer
        total = int(tcfg.total_steps)
        t0 = time.time()
        report = self.reporter
        report.training_started(total, self.global_step, int(tcfg.logging.log_every))
        stop = StopRequest(on_first=self._note_stopping)
        saved_at = None
        try:
            with stop:
                if self.global_step == 0 and tcfg.val_before_train and self.val_prompts:
                    report.status("validating…")
                    self.first_val = self.validate()
                    self.metrics_log.log(0, self.first_val)
                    report.validated(0, self.first_val)
                while self.global_step < total and not stop.requested:
                    metrics = self.step()
                    step = self.global_step
                    if tcfg.val_every and step % tcfg.val_every == 0 and step < total and self.val_prompts:
                        report.status("validating…")
                        val = self.validate()
                        metrics.update(val)
                        report.validated(step, val)
                    if step == total and self.val_prompts:
                        report.status("final validation…")
                        self.last_val = self.validate()
                        metrics.update(self.last_val)
                        report.validated(step, self.last_val)
                    self.metrics_log.log(step, metrics)
                    report.step_done(step, metrics)
                    if (tcfg.save_every and step % tcfg.save_every == 0) or step == total or stop.requested:
                        report.status("checkpoint…")
                        self.save()
                        saved_at = step
        except KeyboardInterrupt:  # the second Ctrl-C: the step under way is dropped
            last = ckpt.latest_checkpoint(self.run_dir)
            raise Interrupted(
                f"training stopped during step {self.global_step + 1}; "
                + (f"the last checkpoint is {last.name}" if last else "no checkpoint was saved yet"),
                hint=f"continue with: archer train --resume --out {self.run_dir}",
            ) from None
        finally:
            report.training_ended()
        if stop.requested and self.global_step < total:
            raise Interrupted(
                f"training interrupted after step {self.global_step}"
                + (f" ({ckpt.CKPT_DIR}/step_{saved_at:06d} saved)" if saved_at == self.global_step else ""),
                hint=f"continue with: archer train --resume --out {self.run_dir}",
            )
        return {"seconds": time.time() - t0, "first_val": self.first_val, "last_val": self.last_val}

    def _note_stopping(self) -> None:
        self.reporter.note(
            "interrupt: stopping after the step under way, which is checkpointed "
            "(Ctrl-C again stops now, keeping only the last checkpoint)"
        )

    def close(self, failing: BaseException | None = None) -> None:
        """Release tools, the trace writer and the metrics file. While `failing` (the error that
        ended the run) is in flight, a failure to close is added to it as a note instead of
        replacing it: a full disk shows the write that failed first, not the trace's close."""
        closers = []
        if getattr(self, "agent", None) is not None:
            closers.append(self.agent.close)
            self.agent = None
        if getattr(self, "influence", None) is not None:
            closers.append(self.influence.tracer.close)
            self.influence = None
        if self.trace is not None:
            closers.append(self.trace.close)
            self.trace = None
        if self.metrics_log is not None:
            closers.append(self.metrics_log.close)
            self.metrics_log = None
        first: BaseException | None = None
        for close in closers:
            try:
                close()
            except Exception as e:  # noqa: BLE001 - every resource gets its close
                if failing is not None:
                    failing.add_note(f"also, while closing: {type(e).__name__}: {e}")
                elif first is None:
                    first = e
        if first is not None:
            raise first


def train(
    composed: Any, run_dir: Path, *, resume: bool = False, reporter: Reporter | None = None
) -> TrainResult:
    """`archer train` with engine: local."""
    trainer = LocalTrainer(composed, run_dir, resume=resume, reporter=reporter)
    try:
        trainer.setup()
        result = trainer.fit()
    except BaseException as e:
        trainer.close(failing=e)
        raise
    trainer.close()
    return TrainResult(
        run_dir=Path(run_dir),
        setup_seconds=trainer.setup_seconds,
        train_seconds=result["seconds"],
        first_val=result["first_val"],
        last_val=result["last_val"],
        trace_dir=trainer.trace_dir,
        warmup_source=trainer.warmup.source,
    )
