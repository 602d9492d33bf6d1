"""`rollout.name=hf`: a verl rollout backend that needs no vLLM, built on archer's own generation code.

verl 0.9.1 rolls out through a `RolloutReplica` (the server handles its agent loop sends requests
to) and a rollout adapter inside each hybrid worker (`BaseRollout`: weights in, sleep/wake). Its
shipped backends (vllm, sglang, trtllm) are all separate inference servers. This one lives inside
the training worker: the worker actor itself is the server handle, its `generate` method (bound
by verl onto the colocated worker, see worker.py) queues the request here, and a batching task
decodes the queued requests together with `archer.core.rollout.generation` in a thread, so the
worker's event loop keeps serving. Weights arrive each step through verl's own `update_weights`
hook (`param.copy_` by name, every parameter must be written); sleep and wake are no-ops because
the copy stays resident (`free_cache_engine=false`). Log-probs are those of the sampled tokens
under `log_softmax(logits / T)` in fp32, what verl's actor computes as the old log-probs.

Use: `rollout.backend=hf` (archer) or `actor_rollout_ref.rollout.name=hf` (verl), tensor parallel 1.
A user runs the whole verl path on one GPU without vLLM, or on a laptop, before a cluster job; it is
slower than vLLM (no paged attention, no continuous batching).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

log = logging.getLogger("archer.verl")

NAME = "hf"
ADAPTER = "archer.core.engines.verl.rollout_hf.HFRollout"
COLLECT_WINDOW_S = 0.02  # after the first request, wait while more keep arriving (batching)
MAX_COLLECT_S = 0.5


ENTROPY_TOPK_KEY = "archer_entropy_topk"  # a request's sampling_params key: per-token entropies wanted
TOPK_ENTROPY_FIELD = "archer_topk_entropy"  # the reply's extra_fields key: per-token top-k entropies
# the request's first N tokens are all that is read (a reply is one segment; the rule reads its
# first agent.entropy_tokens); a server may return more (this one returns them all)
ENTROPY_TOKENS_KEY = "archer_entropy_tokens"


@dataclass
class _Request:
    prompt_ids: list[int]
    params: tuple  # (temperature, top_p, top_k, max_tokens, entropy top-k or 0)
    future: asyncio.Future = field(repr=False)


def sampling_key(sampling_params: dict, prompt_len: int, prompt_length: int, response_length: int) -> tuple:
    """(temperature, top_p, top_k, max_tokens) of one request, as vLLM's server reads them:
    temperature 0 is greedy, top_k -1 (or 0) is off, max_tokens defaults to the response length
    and never runs past prompt_length + response_length."""
    temperature = float(sampling_params.get("temperature", 1.0))
    top_p = float(sampling_params.get("top_p", 1.0))
    top_k = int(sampling_params.get("top_k", -1) or -1)
    budget = max(1, prompt_length + response_length - prompt_len)
    asked = sampling_params.get("max_tokens", sampling_params.get("max_new_tokens"))
    max_tokens = min(int(asked) if asked else response_length, budget)
    penalty = float(sampling_params.get("repetition_penalty", 1.0) or 1.0)
    if penalty != 1.0:
        raise ValueError(f"the hf rollout does not implement repetition_penalty={penalty} (use 1.0 or vllm)")
    return (temperature, top_p, top_k if top_k > 0 else 0, max_tokens)


@torch.no_grad()
def response_log_probs(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    temperature: float,
    entropy_topk: int = 0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, R] log p(response token) under log_softmax(logits / T) in fp32 (T = 1 for greedy), one
    teacher-forced forward over left-padded prompt + right-padded response. With `entropy_topk`
    > 0 also the exact entropy of every position and its top-k truncated entropy (ARPO's
    quantity, archer.core.agent.branching.token_entropies), both [B, R]."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(response_ids)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
    P = prompt_ids.shape[1]
    logits = logits[:, P - 1 : -1].float()
    if temperature > 0:
        logits = logits / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    if entropy_topk <= 0:
        return lp
    from archer.core.agent.branching import token_entropies

    B, R, V = logits.shape
    full, trunc = token_entropies(logits.reshape(B * R, V), 1.0, entropy_topk)  # already / T
    return lp, full.reshape(B, R), trunc.reshape(B, R)


def _cut(result: tuple, max_tokens: int) -> tuple:
    """A decoded (tokens, log-probs, entropies) cut to `max_tokens` tokens."""
    tokens, lps, ent = result
    if len(tokens) <= max_tokens:
        return result
    return (
        tokens[:max_tokens],
        lps[:max_tokens],
        None if ent is None else (ent[0][:max_tokens], ent[1][:max_tokens]),
    )


class HFRollout(BaseRollout):
    """The rollout adapter verl builds in every hybrid worker: an HF copy of the policy that
    takes the actor's weights each step and serves `generate` requests in batches."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from archer.core.rollout.generation import eos_token_ids

        cfg = self.config
        if int(cfg.tensor_model_parallel_size) != 1:
            raise ValueError("the hf rollout runs with tensor_model_parallel_size=1")
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        dtype = getattr(torch, str(cfg.dtype)) if self.device.type == "cuda" else torch.float32
        path = self.model_config.local_path
        trust = bool(getattr(self.model_config, "trust_remote_code", False))
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa", trust_remote_code=trust
        ).to(self.device)
        self.model.eval()
        tok_path = getattr(self.model_config, "local_tokenizer_path", None) or path
        self.tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=trust)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        # never inherit generation_config sampling defaults (HF top_k=50, Instruct models' top_p...)
        self.model.generation_config.top_k = None
        self.model.generation_config.top_p = None
        self.model.generation_config.temperature = None
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.prompt_length = int(cfg.prompt_length)
        self.response_length = int(cfg.response_length)
        self.max_batch = max(1, int(getattr(cfg, "max_num_seqs", 0) or 256))
        self.weights_version: int | None = None
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Task | None = None
        seed = int(getattr(cfg, "seed", 0) or 0)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        torch.manual_seed(seed + rank)

    # -- weights -----------------------------------------------------------------------
    async def resume(self, tags: list[str]) -> None:
        return None  # the copy stays resident (free_cache_engine=false)

    async def release(self) -> None:
        return None

    async def update_weights(self, weights: Any, wire_format: str = "named_tensors", **kwargs: Any) -> None:
        """Copy every tensor by name. Every rank consumes the whole generator (each item may be a
        collective); every parameter of the copy must be written."""
        if wire_format != "named_tensors":
            raise ValueError(f"the hf rollout takes full named tensors, not {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise ValueError(
                "the hf rollout needs merged LoRA weights (actor_rollout_ref.model.lora.merge=true)"
            )
        state = self.model.state_dict(keep_vars=True)
        params = {name for name, _ in self.model.named_parameters()}
        written: set[str] = set()
        unknown: list[str] = []
        with torch.no_grad():
            for name, tensor in weights:
                target = state.get(name)
                if target is None:
                    unknown.append(name)
                    continue
                target.data.copy_(tensor.to(device=target.device, dtype=target.dtype))
                written.add(name)
        missing = sorted(params - written)
        if missing or unknown:
            raise RuntimeError(
                "the hf rollout's weight update does not match its model: "
                f"not written {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unknown {unknown[:5]}{'...' if len(unknown) > 5 else ''}"
            )
        self.weights_version = kwargs.get("global_steps")

    # -- generation --------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], sampling_params: dict, request_id: str) -> TokenOutput:
        """One response for `prompt_ids` (verl's agent loop sends n requests per prompt)."""
        loop = asyncio.get_running_loop()
        # created lazily, in the loop that serves: an asyncio.Queue binds to one event loop (the
        # worker has one; a caller with several, such as tests' asyncio.run, gets a fresh queue)
        if self._queue is None or self._loop is not loop:
            self._queue, self._server, self._loop = asyncio.Queue(), None, loop
        if self._server is None or self._server.done():
            self._server = loop.create_task(self._serve())
        prompt = [int(t) for t in prompt_ids]
        key = sampling_key(sampling_params, len(prompt), self.prompt_length, self.response_length)
        k = int(sampling_params.get(ENTROPY_TOPK_KEY, 0) or 0)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(prompt, (*key, k), future))
        token_ids, log_probs, entropies = await future
        extra: dict[str, Any] = {"global_steps": self.weights_version}
        if entropies is not None:  # archer's agent loop: exact per-token entropies for branching
            extra["archer_entropy"], extra[TOPK_ENTROPY_FIELD] = entropies
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if sampling_params.get("logprobs", True) else None,
            stop_reason="completed",
            extra_fields=extra,
        )

    async def _collect(self) -> list[_Request]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        start = loop.time()
        while len(batch) < self.max_batch and loop.time() - start < MAX_COLLECT_S:
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            before = len(batch)
            await asyncio.sleep(COLLECT_WINDOW_S)
            if self._queue.empty() and len(batch) == before:
                break
        return batch

    async def _serve(self) -> None:
        while True:
            batch = await self._collect()
            # one decode per sampling setting; requests that differ only in max_tokens share it
            # (decoded to the largest, each cut to its own: a prefix's tokens never depend on
            # what is sampled after them), as an agent loop's turns with different room left do
            groups: dict[tuple, list[_Request]] = defaultdict(list)
            for req in batch:
                t, p, k, _, ek = req.params
                groups[(t, p, k, ek)].append(req)
            for (t, p, k, ek), reqs in groups.items():
                params = (t, p, k, max(r.params[3] for r in reqs), ek)
                try:
                    results = await asyncio.to_thread(self._decode, [r.prompt_ids for r in reqs], params)
                    results = [_cut(res, r.params[3]) for res, r in zip(results, reqs, strict=True)]
                except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                    for r in reqs:
                        if not r.future.done():
                            r.future.set_exception(e)
                    if not isinstance(e, Exception):
                        raise
                    continue
                for r, res in zip(reqs, results, strict=True):
                    if not r.future.done():
                        r.future.set_result(res)

    def _decode(self, prompts: list[list[int]], params: tuple) -> list[tuple[list[int], list[float], Any]]:
        """(tokens, log-probs, (entropies, top-k entropies) or None) per prompt."""
        from archer.core.rollout.generation import generate

        temperature, top_p, top_k, max_tokens, entropy_topk = params
        with torch.inference_mode():
            rollout = generate(
                self.model,
                self.tokenizer,
                prompts,
                n=1,
                max_new_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                device=self.device,
            )
            scored = response_log_probs(
                self.model,
                rollout.prompt_ids.to(self.device),
                rollout.prompt_mask.to(self.device),
                rollout.response_ids.to(self.device),
                temperature,
                entropy_topk=entropy_topk,
            )
        lp, full, trunc = (scored, None, None) if entropy_topk <= 0 else scored
        lp = lp.cpu()
        if full is not None:
            full, trunc = full.cpu(), trunc.cpu()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        out = []
        for i, L in enumerate(rollout.response_lengths.tolist()):
            L = max(1, int(L))  # an empty response still returns one token (the pad/EOS), as vLLM does
            ent = None if full is None else (full[i, :L].tolist(), trunc[i, :L].tolist())
            out.append((rollout.response_ids[i, :L].tolist(), lp[i, :L].tolist(), ent))
        return out


class HFReplica(RolloutReplica):
    """One replica per hybrid worker rank: the worker actor is the server handle (hybrid mode only;
    there is no separate server process to start, sleep or wake)."""

    async def launch_servers(self) -> None:
        if self.rollout_mode != RolloutMode.HYBRID:
            raise NotImplementedError(
                "the hf rollout runs inside the training workers (hybrid mode); "
                "standalone and colocated rollouts need vllm or sglang"
            )
        if len(self.workers) != 1:
            raise ValueError("the hf rollout needs tensor_model_parallel_size=1 (one worker per replica)")
        self.servers = list(self.workers)
        self._server_handle = self.workers[0]
        self._server_address = f"{NAME}-{self.replica_rank}"

    async def wake_up(self) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False) -> None:
        return None

    async def resume_generation(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None
