"""The local engine: one process, CPU or one GPU, HF `generate` rollouts and archer's own PPO math.

Per step: sample prompts, roll out n responses each, score them (DAPO group filtering and
overlong shaping when configured), compute old log-probs and per-token entropy in one forward
(reference log-probs when a KL term is on), advantages, write the step's trace in the
background, then run the PPO update. Validation, checkpoints and resume are handled here too.
"""

from __future__ import annotations

import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archer.core.engines.local import checkpoint as ckpt
from archer.core.engines.local.evaluation import evaluate
from archer.core.engines.local.forward import batch_logprobs
from archer.core.engines.local.prompts import Prompt, PromptSampler, load_datasets
from archer.core.engines.local.rollout import Rollout, decode_responses, generate
from archer.core.engines.local.update import UpdateBatch, ppo_update
from archer.core.engines.local.warmup import cached_warmup_path, run_warmup, warmup_key
from archer.core.metrics import MetricsLog
from archer.core.progress import TrainingProgress
from archer.core.run import write_run_files
from archer.errors import ArcherError

WARMUP_DIR = "warmup"
TOKENIZER_DIR = "tokenizer"
DONE_MARKER = ".complete"


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
    """Everything one step produced before the update (kept for the trace and metrics)."""

    rollout: Rollout
    prompts: list[Prompt]  # one per group
    rewards: torch.Tensor  # [B] after shaping
    correct: list[bool]
    texts: list[str]
    rounds: int
    groups_seen: int
    groups_dropped: int
    token_role: list[np.ndarray] | None = None  # agent mode: 0 model, 1 tool result, 2 tool call
    extra_metrics: dict[str, float] | None = None


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts of different widths (prompts stay left-padded, responses right-padded)."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    R = max(p.response_ids.shape[1] for p in parts)

    def lpad(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    def rpad(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    group, offset = [], 0
    for p in parts:
        group += [g + offset for g in p.group]
        offset += max(p.group) + 1 if p.group else 0
    return Rollout(
        prompt_ids=torch.cat([lpad(p.prompt_ids, P, pad_id) for p in parts]),
        prompt_mask=torch.cat([lpad(p.prompt_mask, P, 0) for p in parts]),
        response_ids=torch.cat([rpad(p.response_ids, R, pad_id) for p in parts]),
        response_mask=torch.cat([rpad(p.response_mask, R, 0) for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        group=group,
        sample=[s for p in parts for s in p.sample],
        loss_mask=(
            torch.cat([rpad(p.train_mask, R, 0) for p in parts])
            if any(p.loss_mask is not None for p in parts)
            else None
        ),
    )


class LocalTrainer:
    """Owns the model, optimizer, data order, trace writer and metrics of one local run."""

    def __init__(
        self,
        composed: Any,
        run_dir: Path,
        *,
        resume: bool = False,
        console: Any = None,
        live: bool | None = None,
    ):
        self.composed = composed
        self.cfg = composed.cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.console = console
        self.live = live
        self.global_step = 0
        self.trace = None
        self.metrics_log: MetricsLog | None = None
        self.first_val: dict[str, float] = {}
        self.setup_seconds = 0.0
        self.last_val: dict[str, float] = {}
        self._progress: TrainingProgress | None = None

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

        tokenizer = load_tokenizer(cfg.model)
        self.tokenizer = tokenizer
        self.agent = None
        if cfg.agent.enable:  # agent mode: tool task data first (load_datasets then finds it), tools next
            from archer.core.agent.engine import check_config, prepare_task_data

            check_config(cfg)
            prepare_task_data(cfg, self.run_dir / "data")
        self.train_prompts, self.val_prompts, self.data_counts = load_datasets(cfg, tokenizer, self.run_dir)
        if cfg.agent.enable:
            from archer.core.agent.engine import AgentRunner

            self.agent = AgentRunner(cfg, tokenizer, self.run_dir, self.cache_dir, self.device)
        self.val_prompts = self.val_prompts[: cfg.rollout.val.max_prompts or None]
        self.sampler = PromptSampler(
            len(self.train_prompts), seed=int(cfg.seed), shuffle=bool(cfg.data.shuffle)
        )

        resume_from = ckpt.latest_checkpoint(self.run_dir) if self.resume else None
        if self.resume and resume_from is None:
            self._note("no checkpoint found in the run: starting again from the beginning")
        start_weights = self._initial_weights()  # warm-up (or None: model.path / tiny init)
        self.model, _ = load_policy(cfg, init_from=resume_from or start_weights)
        self.model.to(self.device)
        self.ref_model = None
        if cfg.actor.use_kl_loss:
            self.ref_model, _ = load_policy(cfg, init_from=start_weights)
            self.ref_model.to(self.device).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        tok_dir = self.run_dir / TOKENIZER_DIR
        if not tok_dir.exists():
            tokenizer.save_pretrained(tok_dir)

        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.actor.optim.lr,
            betas=tuple(cfg.actor.optim.betas),
            weight_decay=cfg.actor.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda())

        if resume_from is not None:
            state = ckpt.load_trainer_state(resume_from)
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.sampler.load_state_dict(state["sampler"])
            self.global_step = int(state["step"])
            self.first_val = state.get("first_val", {})
            ckpt.set_rng_state(state["rng"])
            MetricsLog.truncate(self.run_dir, self.global_step)
            self._note(f"resumed from {resume_from.name} (step {self.global_step})")
        elif self.resume:
            MetricsLog.truncate(self.run_dir, 0)

        self.influence = None
        if cfg.influence.enable:
            from archer.core.engines.local.influence_step import LocalInfluence

            self.influence = LocalInfluence(self.model, cfg.influence)
            mini_batches = cfg.data.train_batch_size // cfg.actor.ppo_mini_batch_size
            if cfg.influence.output_function == "training_loss" and (
                cfg.actor.ppo_epochs > 1 or mini_batches > 1
            ):
                self._note(
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
        return self

    def _note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.log(text)
        else:
            print(text, file=sys.stderr, flush=True)

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

    def _initial_weights(self) -> Path | None:
        """Run (or reuse) the supervised warm-up; returns the folder RL starts from, if any."""
        cfg = self.cfg
        if not cfg.warmup.enable or cfg.warmup.steps == 0:
            return None
        target = self.run_dir / WARMUP_DIR
        if (target / DONE_MARKER).exists():
            return target
        key = warmup_key(cfg, len(self.train_prompts))
        cached = cached_warmup_path(self.cache_dir, key)
        if cfg.warmup.cache and (cached / DONE_MARKER).exists():
            self._copy_dir(cached, target)
            self._note(f"warm-up: reused the cached result {cached}")
            return target
        from archer.core.models.loading import load_policy

        model, tok = load_policy(cfg)
        model.to(self.device)
        t0 = time.time()
        progress = None
        console_live = self.live if self.live is not None else sys.stdout.isatty()
        if console_live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(
                TextColumn("[bold]warm-up[/bold]"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[loss]}"),
            )
            task = progress.add_task("warm-up", total=cfg.warmup.steps, loss="")
            progress.start()

        def on_step(i: int, loss: float) -> None:
            if progress is not None:
                progress.update(task, completed=i, loss=f"loss {loss:.3f}")
            elif i % 50 == 0 or i == cfg.warmup.steps:
                print(f"warm-up {i}/{cfg.warmup.steps}  loss {loss:.3f}", flush=True)

        demos = self.agent.demonstrations(self.train_prompts) if self.agent is not None else None
        try:
            stats = run_warmup(
                model,
                tok,
                self.train_prompts,
                cfg.warmup,
                seed=int(cfg.seed),
                device=self.device,
                on_step=on_step,
                demos=demos,
            )
        finally:
            if progress is not None:
                progress.stop()
        tmp = target.with_name(f".{WARMUP_DIR}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / DONE_MARKER).write_text(f"{stats}\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        if cfg.warmup.cache:
            self._copy_dir(target, cached)
        self._note(
            f"warm-up: {int(stats['warmup/steps'])} steps in {time.time() - t0:.1f}s (final loss "
            f"{stats['warmup/final_loss']:.3f})"
        )
        del model
        return target

    @staticmethod
    def _copy_dir(src: Path, dst: Path) -> None:
        tmp = dst.with_name(f".{dst.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)

    def _open_trace(self, resume_after_step: int | None) -> None:
        from archer import __version__
        from archer.core.run import git_commit
        from archer.core.trace import TraceWriter

        tcfg = self.cfg.trace
        trace_dir = Path(tcfg.dir) if tcfg.dir else self.run_dir / "trace"
        self.trace_dir = trace_dir
        summary = {
            "engine": "local",
            "preset": self.composed.preset,
            "run_dir": str(self.run_dir.resolve()),
            "model_path": self.cfg.model.path,
            "tokenizer_path": str((self.run_dir / TOKENIZER_DIR).resolve()),
            "git_commit": git_commit(),
            "archer_version": __version__,
            "rollout_n": int(self.cfg.rollout.n),
            "influence": bool(self.cfg.influence.enable),
        }
        if self.agent is not None:
            summary["agent"] = {
                "algorithm": str(self.cfg.agent.algorithm),
                "tools": list(self.agent.toolbox.available),
                "python_sandbox": self.agent.isolation,
            }
        self.trace = TraceWriter(
            trace_dir,
            summary,
            write_every=tcfg.write_every,
            fsync=tcfg.fsync,
            row_group_size=tcfg.row_group_size,
            compression_level=tcfg.compression_level,
            max_queue=tcfg.max_queue,
            resume_after_step=resume_after_step,
        )

    # ------------------------------------------------------------------ one step
    def _score(self, ro: Rollout, prompts: list[Prompt]) -> tuple[list[str], list[Any]]:
        from archer.core.rewards import score_batch

        texts = decode_responses(self.tokenizer, ro)
        answers = [prompts[g].answer for g in ro.group]
        return texts, score_batch(
            self.cfg.reward.function, texts, answers, timeout_s=self.cfg.reward.timeout_s
        )

    def _agent_rollout(self) -> StepBatch:
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
            1,
            len(prompts),
            0,
            token_role=roles,
            extra_metrics=self.agent.step_metrics(batch),
        )

    def _rollout(self) -> StepBatch:
        """Sample and score; with DAPO filtering, keep sampling until enough informative groups."""
        if self.agent is not None:
            return self._agent_rollout()
        cfg = self.cfg
        n = int(cfg.rollout.n)
        target = int(cfg.data.train_batch_size)
        fg = cfg.algorithm.filter_groups
        kept: list[tuple[Rollout, list[Prompt], list[str], list[Any]]] = []
        n_kept, rounds, seen, dropped = 0, 0, 0, 0
        while True:
            rounds += 1
            idx = self.sampler.take(target)
            prompts = [self.train_prompts[i] for i in idx]
            ro = generate(
                self.model,
                self.tokenizer,
                [p.ids for p in prompts],
                n=n,
                max_new_tokens=int(cfg.rollout.max_new_tokens),
                temperature=float(cfg.rollout.temperature),
                top_p=float(cfg.rollout.top_p),
                top_k=int(cfg.rollout.top_k),
                batch_size=int(cfg.rollout.generation_batch_size),
                device=self.device,
                compile_decode=bool(cfg.rollout.compile_decode),
                pad_prompts_to=int(cfg.data.max_prompt_length),
            )
            texts, scores = self._score(ro, prompts)
            seen += len(prompts)
            if not fg.enable:
                kept.append((ro, prompts, texts, scores))
                n_kept = len(prompts)
                break
            keep_groups = []
            for g in range(len(prompts)):
                vals = [
                    float(scores[g * n + s].correct if fg.metric == "acc" else scores[g * n + s].reward)
                    for s in range(n)
                ]
                if max(vals) != min(vals):
                    keep_groups.append(g)
            dropped += len(prompts) - len(keep_groups)
            take = keep_groups[: target - n_kept]
            if take:
                rows = [g * n + s for g in take for s in range(n)]
                sub = ro.select(rows)
                sub.group = [take.index(g) for g in sub.group]
                kept.append(
                    (sub, [prompts[g] for g in take], [texts[r] for r in rows], [scores[r] for r in rows])
                )
                n_kept += len(take)
            cap = int(fg.max_num_gen_batches)
            if n_kept >= target or (cap and rounds >= cap):
                break
        if n_kept == 0:  # every group was constant even after the cap: train on the last round as is
            kept = [(ro, prompts, texts, scores)]
            n_kept = len(prompts)
        rollout = concat_rollouts([k[0] for k in kept], int(self.tokenizer.pad_token_id))
        all_prompts = [p for k in kept for p in k[1]]
        texts = [t for k in kept for t in k[2]]
        scores = [s for k in kept for s in k[3]]
        rewards = torch.tensor([float(s.reward) for s in scores], dtype=torch.float32)
        ob = cfg.algorithm.overlong_buffer
        if ob.enable:
            from archer.core.algorithms import overlong_penalty

            rewards = rewards + overlong_penalty(
                rollout.response_lengths.float(),
                max_response_length=int(cfg.rollout.max_new_tokens),
                buffer_len=int(ob.len),
                penalty_factor=float(ob.penalty_factor),
            )
        return StepBatch(
            rollout, all_prompts, rewards, [bool(s.correct) for s in scores], texts, rounds, seen, dropped
        )

    def _advantages(self, sb: StepBatch) -> torch.Tensor:
        from archer.core.algorithms import get_adv_estimator

        ro = sb.rollout
        mask = ro.train_mask.float()  # agent mode: tool-result tokens get no advantage
        last = (ro.response_lengths - 1).clamp(min=0)
        token_rewards = torch.zeros_like(mask)
        token_rewards[torch.arange(ro.size), last] = sb.rewards
        uids = [self._uid(sb, g) for g in ro.group]
        adv, _ = get_adv_estimator(self.cfg.algorithm.adv_estimator)(
            token_rewards,
            mask,
            uids,
            norm_adv_by_std_in_grpo=bool(self.cfg.algorithm.norm_adv_by_std_in_grpo),
        )
        return adv * mask

    @staticmethod
    def _uid(sb: StepBatch, group: int) -> str:
        return f"p{sb.prompts[group].index}-g{group}"

    def step(self) -> dict[str, float]:
        """One RL step; returns its metrics (also logged and traced)."""
        cfg = self.cfg
        step = self.global_step + 1
        t_start = time.perf_counter()
        sb = self._rollout()
        ro = sb.rollout
        t_rollout = time.perf_counter()

        temperature = float(cfg.rollout.temperature)
        micro = int(cfg.actor.ppo_micro_batch_size)
        # One optimizer step per rollout: the update's own forward gives the old log-probs and the
        # entropy (on-policy), so no separate log-prob pass is needed.
        on_policy = cfg.actor.ppo_epochs == 1 and cfg.actor.ppo_mini_batch_size * cfg.rollout.n >= ro.size
        old_logp = entropy = None
        if not on_policy:
            old_logp, entropy = batch_logprobs(
                self.model,
                ro,
                micro_batch_size=micro,
                temperature=temperature,
                with_entropy=True,
                device=self.device,
            )
        ref_logp = None
        if self.ref_model is not None:
            ref_logp, _ = batch_logprobs(
                self.ref_model,
                ro,
                micro_batch_size=micro,
                temperature=temperature,
                with_entropy=False,
                device=self.device,
            )
        advantages = self._advantages(sb)
        t_logprob = time.perf_counter()

        influence_rows, accepted, infl_metrics = None, None, {}
        hook = None
        if self.influence is not None:
            seq_adv = advantages.sum(-1) / ro.response_lengths.clamp(min=1)
            self.influence.begin(ro, sb.rewards, seq_adv, [self._uid(sb, g) for g in ro.group])
            if cfg.influence.output_function == "training_loss":
                hook = self.influence.micro_hook
            else:
                self.influence.separate_backward(
                    advantages,
                    sb.rewards,
                    micro_batch_size=micro,
                    temperature=temperature,
                    device=self.device,
                )
        t_capture = time.perf_counter()

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
        if fused_entropy is not None:
            entropy = fused_entropy
        t_update = time.perf_counter()
        if self.influence is not None:
            accepted = self.influence.accepted
            influence_rows, infl_metrics = self.influence.finish()
        t_influence = time.perf_counter()

        if self.trace is not None:
            self._submit_trace(step, sb, entropy, advantages, influence_rows, accepted)
        t_trace = time.perf_counter()

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
            **actor_metrics,
            **infl_metrics,
            **(sb.extra_metrics or {}),
        }
        metrics["actor/kl"] = metrics.get("actor/ppo_kl", float("nan"))
        metrics["time/rollout"] = t_rollout - t_start
        metrics["time/logprob"] = t_logprob - t_rollout
        metrics["time/update"] = t_update - t_capture
        metrics["time/trace"] = t_trace - t_influence
        if self.influence is not None:
            metrics["time/influence"] = (t_capture - t_logprob) + (t_influence - t_update)
        metrics["time/step"] = t_trace - t_start
        metrics["perf/peak_cpu_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if self.device.type == "cuda":
            metrics["perf/peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self.global_step = step
        return metrics

    def _submit_trace(
        self,
        step: int,
        sb: StepBatch,
        entropy: torch.Tensor,
        advantages: torch.Tensor,
        influence: list | None = None,
        accepted: list[bool] | None = None,
    ) -> None:
        from archer.core.trace import build_step_table

        ro = sb.rollout
        lengths = ro.response_lengths.tolist()
        prompt_ids = []
        for i in range(ro.size):
            row = ro.prompt_ids[i][ro.prompt_mask[i].bool()]
            prompt_ids.append(row.numpy().astype(np.int32))
        resp = ro.response_ids.numpy().astype(np.int32)
        ent = entropy.numpy().astype(np.float16)
        adv_seq = (advantages.sum(-1) / ro.response_lengths.clamp(min=1)).numpy()
        table = build_step_table(
            step,
            uid=[self._uid(sb, g) for g in ro.group],
            group_index=list(ro.group),
            sample_index=list(ro.sample),
            prompt_ids=prompt_ids,
            response_ids=[resp[i, :L] for i, L in enumerate(lengths)],
            entropy=[ent[i, :L] for i, L in enumerate(lengths)],
            reward=sb.rewards.numpy(),
            advantage=adv_seq,
            truncated=ro.truncated.numpy(),
            correct=sb.correct,
            accepted=accepted,
            influence=influence,
            data_source=[sb.prompts[g].data_source for g in ro.group],
            extra=None if sb.token_role is None else {"token_role": _role_column(sb.token_role)},
        )
        self.trace.submit(step, table)

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
            self.trace.flush()
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
        cfg = self.cfg
        tcfg = cfg.trainer
        total = int(tcfg.total_steps)
        t0 = time.time()
        with TrainingProgress(
            total,
            start_step=self.global_step,
            log_every=tcfg.logging.log_every,
            console=self.console,
            live=self.live,
        ) as progress:
            self._progress = progress
            try:
                if self.global_step == 0 and tcfg.val_before_train and self.val_prompts:
                    progress.status("validating…")
                    self.first_val = self.validate()
                    self.metrics_log.log(0, self.first_val)
                    progress.log(
                        "validation before training: accuracy "
                        f"{self.first_val.get('val/accuracy', float('nan')):.3f}"
                    )
                while self.global_step < total:
                    metrics = self.step()
                    step = self.global_step
                    if tcfg.val_every and step % tcfg.val_every == 0 and step < total and self.val_prompts:
                        progress.status("validating…")
                        metrics.update(self.validate())
                    if step == total and self.val_prompts:
                        progress.status("final validation…")
                        self.last_val = self.validate()
                        metrics.update(self.last_val)
                    self.metrics_log.log(step, metrics)
                    progress.step_done(step, metrics)
                    if (tcfg.save_every and step % tcfg.save_every == 0) or step == total:
                        progress.status("checkpoint…")
                        self.save()
            except KeyboardInterrupt:
                if self.global_step > 0:
                    progress.log(f"interrupted: saving a checkpoint at step {self.global_step}…")
                    self.save()
                raise ArcherError(
                    f"training interrupted at step {self.global_step}",
                    hint=f"continue with: archer train --resume --out {self.run_dir}",
                ) from None
            finally:
                self._progress = None
        return {"seconds": time.time() - t0, "first_val": self.first_val, "last_val": self.last_val}

    def close(self) -> None:
        if getattr(self, "agent", None) is not None:
            self.agent.close()
            self.agent = None
        if getattr(self, "influence", None) is not None:
            self.influence.tracer.close()
            self.influence = None
        if self.trace is not None:
            self.trace.close()
            self.trace = None
        if self.metrics_log is not None:
            self.metrics_log.close()
            self.metrics_log = None


def _role_column(roles: list[np.ndarray]) -> Any:
    """The trace's per-token `token_role` column (list<int8>) from one role array per response."""
    import pyarrow as pa

    offsets = np.zeros(len(roles) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in roles], out=offsets[1:])
    values = np.concatenate(roles).astype(np.int8) if roles else np.zeros(0, np.int8)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int8()))


def train(composed: Any, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """`archer train` with engine: local."""
    from rich.console import Console

    console = Console(highlight=False)
    trainer = LocalTrainer(composed, run_dir, resume=resume, console=console)
    try:
        trainer.setup()
        console.print(
            f"[bold]archer[/bold] local engine · preset [cyan]{composed.preset}[/cyan] · device "
            f"{trainer.device} · "
            f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters · "
            f"{trainer.data_counts['train']} train / {len(trainer.val_prompts)} val prompts · run {run_dir}"
        )
        if trainer.agent is not None:
            console.print(trainer.agent.describe())
        result = trainer.fit()
    finally:
        trainer.close()
    _print_summary(console, trainer, result)
    return result


def _print_summary(console: Any, trainer: LocalTrainer, result: dict[str, Any]) -> None:
    from archer.core.metrics import read_metrics

    rows = [
        r for r in read_metrics(trainer.run_dir) if r.get("step", 0) > 0 and r.get("reward/mean") is not None
    ]
    console.print(
        f"[bold green]done[/bold green] in {trainer.setup_seconds + result['seconds']:.0f}s "
        f"(set-up and warm-up {trainer.setup_seconds:.0f}s, training {result['seconds']:.0f}s) · run "
        f"{trainer.run_dir}"
    )
    if rows:
        k = min(5, len(rows))
        first = sum(r["reward/mean"] for r in rows[:k]) / k
        last = sum(r["reward/mean"] for r in rows[-k:]) / k
        console.print(
            f"reward (mean of first {k} steps → last {k}): {first:.3f} → {last:.3f} ({last - first:+.3f})"
        )
    before, after = result.get("first_val", {}), result.get("last_val", {})
    if before.get("val/accuracy") is not None and after.get("val/accuracy") is not None:
        console.print(
            f"validation accuracy before → after: {before['val/accuracy']:.3f} → {after['val/accuracy']:.3f}"
        )
    if trainer.cfg.trace.enable:
        console.print(f"trace: {trainer.trace_dir}")
        console.print(f"explore it: [bold]archer view {trainer.run_dir}[/bold]")
