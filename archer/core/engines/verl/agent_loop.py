"""ARPO/AEPO tool rollouts inside verl's agent loop (`agent.enable` on the verl engine).

verl 0.9.1's V1 trainer hands each step's prompts to `AgentLoopManagerTQ`, whose Ray workers
(`AgentLoopWorkerTQ`) run, per prompt, `rollout.n` independent sessions and store each finished
one in TransferQueue under `{uid}_{session}_{index}`; the prompt's `{uid}` tag turns `finished`
when all are in. archer's worker overrides that per-prompt step (`_run_prompt`) with
`archer.core.agent.group.GroupRollout`: `agent.initial_rollouts` roots, the `<python>`/`<search>`
tag protocol and the sandboxed tools of the local engine (`archer.core.agent.engine.build_tools`),
a branching decision after every tool result with the shared ARPO/AEPO rule, each branch stored
as its own session (ids 0..n-1), the group capped at `rollout.n` and filled. Tool-result tokens
get `response_mask` 0, which verl's TQ adapter also uses as the `loss_mask`: no loss, no advantage.

Each row's `extra_fields["archer_agent"]` carries what the trainer needs back: the token roles
(the trace's `token_role`), the trajectory's origin, its tool calls and its decisions (the step's
`agent/*` metrics, `archer.core.agent.stats`). The per-token entropy the rule reads comes from the
rollout server (`archer_entropy_topk: k` in the request, `archer_topk_entropy` in the reply): archer's
hf replica computes it from the whole distribution, archer's vLLM server (rollout_vllm.py) from the
top-k log-probs it asks vLLM for.

AEPO: with `agent.aepo.consecutive_count=iteration` the prompts of the chunk a worker gets in one
`generate_sequences` call share a `group.Lockstep` (their trajectories wait for each other at the
branching decisions, as AEPO's loop does; with several agent-loop workers, each worker's chunk is
one lock-step batch); `agent.aepo.dynamic_rollouts` runs each group's root sample and monitoring
rollout first. Rows then carry the group's (H_root, H̄_tool, m) and the iteration count.

Installed by `actor_rollout_ref.rollout.agent.agent_loop_manager_class` (archer sets it with
`agent.enable`); the settings come from the config's `archer.agent` section.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import ray
import transfer_queue as tq
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
from verl.trainer.ppo.v1.agent_loop_tq import (
    AgentLoopManagerTQ,
    AgentLoopWorkerTQ,
    apply_greedy_sampling_params,
)

from archer.core.agent.group import Generation, GroupRollout, Lockstep, ToolReply
from archer.core.engines.verl.rollout_hf import ENTROPY_TOKENS_KEY, ENTROPY_TOPK_KEY, TOPK_ENTROPY_FIELD

log = logging.getLogger("archer.verl")

MANAGER = "archer.core.engines.verl.agent_loop.ArcherAgentLoopManager"
ROW_FIELD = "archer_agent"  # extra_fields key of every agent row
LOCKSTEP_KEY = "__archer_lockstep__"  # a chunk's row field naming its AEPO lock-step batch
TOPK_ENTROPY_SERVERS = ("hf", "vllm")  # rollout.name values whose servers return top-k entropies


def _plain(x: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x


class _ArcherAgentLoopWorker(AgentLoopWorkerTQ.__ray_actor_class__):
    """`AgentLoopWorkerTQ` with archer's per-prompt group rollout (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from omegaconf import OmegaConf

        section = self.config.get("archer", {}) or {}
        if "agent" not in section:
            raise ValueError(
                "archer's agent loop needs the config's archer.agent section (set by archer train)"
            )
        self.archer_agent = OmegaConf.create(_plain(section.agent))
        self.archer_run_dir = Path(str(section.get("run_dir", ".")))
        self.archer_seed = int(self.config.actor_rollout_ref.rollout.get("seed", 0) or 0)
        self._toolbox = None
        self._text = None  # TokenText, built with the tokenizer on first use
        from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

        self._builder = create_continuous_token_builder(
            self.tokenizer,
            hf_model_type=self.hf_model_type,
            chat_template_kwargs=self.config.data.get("apply_chat_template_kwargs", {}),
            processor=self.processor,
        )
        hf = self.model_config.hf_config
        self._vocab = int(getattr(hf, "vocab_size", 0) or len(self.tokenizer))
        eos = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        cfg_eos = getattr(hf, "eos_token_id", None)
        eos |= {
            int(e) for e in (cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]) if e is not None
        }
        self._eos = sorted(eos)
        self._server = str(self.config.actor_rollout_ref.rollout.name)
        self._locks: dict[str, list] = {}  # chunk id -> [Lockstep, prompts yet to pick it up]

    async def generate_sequences(self, batch: Any) -> None:
        """verl's dispatch; with AEPO's per-iteration counter the chunk's prompts share a Lockstep."""
        from archer.core.agent.engine import branch_settings

        if branch_settings(self.archer_agent, int(self.config.actor_rollout_ref.rollout.n)).lockstep:
            from tensordict import NonTensorData

            key = uuid4().hex
            self._locks[key] = [Lockstep(len(batch)), len(batch)]
            batch[LOCKSTEP_KEY] = NonTensorData(key)
        await super().generate_sequences(batch)

    def _lockstep(self, prompt: dict) -> Lockstep | None:
        """The prompt's lock-step batch (each prompt picks it up once; the last one drops the entry)."""
        key = prompt.pop(LOCKSTEP_KEY, None)
        entry = self._locks.get(key) if key is not None else None
        if entry is None:
            return None
        entry[1] -= 1
        if entry[1] <= 0:
            del self._locks[key]
        return entry[0]

    # -- tools ---------------------------------------------------------------------------
    @property
    def toolbox(self) -> Any:
        if self._toolbox is None:  # built on first use, in this worker's process
            from archer.core.agent.engine import build_tools

            a = self.archer_agent
            self._toolbox, _, _ = build_tools(a, self.archer_run_dir, Path(str(a.cache_dir)))
        return self._toolbox

    async def _call_tool(self, tool: str, content: str) -> ToolReply:
        result = await asyncio.wrap_future(self.toolbox.submit(tool, content))
        return ToolReply(result.text, result.status)

    # -- tokens --------------------------------------------------------------------------
    def _token_text(self) -> Any:
        if self._text is None:
            from archer.core.agent.tokens import TokenText

            self._text = TokenText(self.tokenizer)
        return self._text

    async def _prompt_ids(self, messages: Any) -> list[int]:
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(None, lambda: self._builder.build_initial_tokens(list(messages)))
        limit = int(self.rollout_config.prompt_length)
        return list(ids)[-limit:]

    # -- one prompt ----------------------------------------------------------------------
    async def _run_prompt(
        self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False
    ) -> None:
        validate = bool(trajectory["validate"])
        uid, partition_id = prompt["uid"], "val" if validate else "train"
        lock = self._lockstep(prompt)
        made: list[tuple] = []  # (group, ...) once built: a group with the lock joins or leaves it itself
        try:
            await tq.async_kv_put(key=uid, partition_id=partition_id, tag={"status": "running"})
            group = await self._archer_prepare(prompt, sampling_params, validate, lock)
            made.append(group)
            await self._archer_finish(prompt, *group)
            status = "finished"
        except Exception:
            log.exception("archer agent loop: prompt %s failed", uid)
            status = "failure"
        finally:
            if lock is not None and not (made and made[0][0].lock is lock):
                lock.leave(None)  # never joined (validation, or failed before): nobody waits for it
        await tq.async_kv_put(key=uid, partition_id=partition_id, tag={"status": status})

    async def _archer_prepare(
        self, prompt: dict, sampling_params: dict, validate: bool, lock: Lockstep | None
    ) -> tuple:
        from archer.core.agent.engine import branch_settings

        config = self.config.actor_rollout_ref.rollout
        n = int(prompt.pop("__rollout_n__", config.n if not validate else config.val_kwargs.n))
        do_sample = prompt.pop("__do_sample__", True)
        prompt.pop("agent_name", None)  # verl's loop passes it apart from the row's fields, too
        params = dict(sampling_params)
        if not validate and not do_sample:
            apply_greedy_sampling_params(params)
        a = self.archer_agent
        settings = branch_settings(a, n, validation=validate)
        if self._server in TOPK_ENTROPY_SERVERS:
            params[ENTROPY_TOPK_KEY] = int(settings.entropy_topk)
            params[ENTROPY_TOKENS_KEY] = int(settings.entropy_tokens)  # one reply = one segment
        prompt_ids = await self._prompt_ids(prompt["raw_prompt"])
        timing = {"generate": 0.0, "tools": 0.0}
        steps: list[int] = []

        async def generate(context: list[int], max_tokens: int) -> Generation:
            t0 = time.perf_counter()
            out = await self.llm_client.generate(
                request_id=uuid4().hex,
                prompt_ids=context,
                sampling_params={**params, "max_tokens": int(max_tokens)},
            )
            timing["generate"] += time.perf_counter() - t0
            gs = out.extra_fields.get("global_steps")
            if gs is not None:
                steps.append(int(gs))
            entropies = out.extra_fields.get(TOPK_ENTROPY_FIELD)
            if entropies is None and out.token_ids and ENTROPY_TOPK_KEY in params:
                raise RuntimeError(  # never branch on silent zeros
                    f"the {self._server} rollout server returned no top-k entropies (archer's replica "
                    "was not installed: PD disaggregation or fully-async rollouts are not supported)"
                )
            return Generation(list(out.token_ids), out.log_probs, entropies)

        async def call_tool(tool: str, content: str) -> ToolReply:
            t0 = time.perf_counter()
            try:
                return await self._call_tool(tool, content)
            finally:
                timing["tools"] += time.perf_counter() - t0

        seed = f"{self.archer_seed}-{prompt.get('global_steps')}-{prompt['uid']}"
        group = GroupRollout(
            settings,
            generate=generate,
            call_tool=call_tool,
            encode=self._token_text().encode,
            piece=self._token_text().piece,
            eos_ids=self._eos,
            tools=self.toolbox.available,
            vocab_size=self._vocab,
            max_response_tokens=int(self.rollout_config.response_length),
            max_turns=int(a.max_turns),
            rng=random.Random(seed),
            lockstep=lock if settings.lockstep else None,
        )
        return group, prompt_ids, params, timing, steps, validate

    async def _archer_finish(
        self,
        prompt: dict,
        group: GroupRollout,
        prompt_ids: list[int],
        params: dict,
        timing: dict,
        steps: list[int],
        validate: bool,
    ) -> None:
        result = await group.run(prompt_ids)
        want_logprobs = bool(params.get("logprobs", False))
        for t in result.trajectories:
            summary = t.summary()
            summary["dynamic"] = list(result.dynamic) if result.dynamic is not None else None
            summary["iterations"] = result.stats.get("agent/iterations")
            extra = {
                ROW_FIELD: summary,
                "turn_scores": [],
                "tool_rewards": [],
                "min_global_steps": min(steps) if steps else None,
                "max_global_steps": max(steps) if steps else None,
            }
            output = AgentLoopOutput(
                prompt_ids=prompt_ids,
                response_ids=t.tokens,
                response_mask=t.loss_mask,
                response_logprobs=t.log_probs if want_logprobs else None,
                num_turns=2 + 2 * len(t.calls),
                metrics=AgentLoopMetrics(
                    generate_sequences=timing["generate"] / len(result.trajectories),
                    tool_calls=timing["tools"] / len(result.trajectories),
                ),
                extra_fields=extra,
            )
            await self._agent_loop_postprocess(output, validate, **prompt, session_id=t.session)


ArcherAgentLoopWorker = ray.remote(_ArcherAgentLoopWorker)


class ArcherAgentLoopManager(AgentLoopManagerTQ):
    """`AgentLoopManagerTQ` whose workers run archer's group rollout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent_loop_workers_class = ArcherAgentLoopWorker
