"""`rollout.name=vllm` for archer's agent loop: verl's vLLM server, also returning top-k entropies.

ARPO and AEPO branch on the entropy of the tokens after a tool result. verl 0.9.1's vLLM server
(`vLLMHttpServer.generate`) asks vLLM for the sampled token's log-prob only: it overwrites the
request's `logprobs` with 0 (`vllm_async_server.py`, "sampling_params['logprobs'] = 0 if ..."),
builds vLLM's `SamplingParams`, iterates `self.engine.generate(...)` and keeps, per generated
token, the log-prob of the sampled token. The original ARPO asks vLLM for `logprobs=10` and sums
-p log p over that list. This server does the same inside verl's own code path:

- a request whose sampling params carry `archer_entropy_topk: k` (archer's agent loop sets it from
  `agent.entropy_topk`) is remembered by its request id, and the key is taken out before verl
  builds `SamplingParams` from the rest;
- `self.engine` (vLLM's `AsyncLLM`, assigned by verl when the server starts) is wrapped: for a
  remembered request the wrapper raises `SamplingParams.logprobs` to k before vLLM sees it, passes
  vLLM's outputs through unchanged and, from the final output, computes per generated token the
  top-k truncated entropy -Σ_top-k p log p (`archer.core.agent.branching.topk_entropy`, the
  estimator the hf replica and the local engine use; with k entries vLLM may add the sampled token
  as a (k+1)-th one, which is left out, and tokens masked by top-k/top-p sampling, log-prob -inf,
  add nothing);
- the reply (verl's `TokenOutput`) gets `extra_fields["archer_topk_entropy"]`, one value per token
  (of the first `archer_entropy_tokens` tokens when the request names N: a reply is one segment and
  the rule reads only its first `agent.entropy_tokens`, and the per-token Python work would
  otherwise grow with every long reply on the server's event loop), where
  archer's agent loop reads it (as from the hf replica); its `log_probs` are the sampled tokens' as
  before (`None` when the request did not ask for them). vLLM itself still returns k log-probs for
  every token of the request (no per-position setting), as for ARPO's own rollout.

Log-probs are vLLM's `processed_logprobs` (verl's default `rollout.logprobs_mode`): after
temperature and top-k/top-p, i.e. of the distribution the token was sampled from, as the hf
replica's are with top-p 1 (a `*_logits` mode is refused: those are no probabilities). vLLM
refuses k above its `max_logprobs` (20 unless `engine_kwargs.vllm.max_logprobs` says more; archer
sets it when `agent.entropy_topk` > 20). Requests without the key behave exactly as on verl's
server. Prefill/decode disaggregation is refused with a top-k request (the request id changes on
its way to the decode peer).

Installed only where archer's trainer runs an agent loop with `rollout.name=vllm`
(`install()`, from `ArcherTrainer._setup`): verl's replica registry then gives `ArcherVLLMReplica`
for "vllm", whose servers are `ArcherVLLMHttpServer`. This module imports vLLM: load it only there.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import ray
from verl.workers.rollout.replica import RolloutReplicaRegistry, TokenOutput
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

from archer.core.agent.branching import topk_entropy
from archer.core.engines.verl.rollout_hf import (  # the hf replica's keys
    ENTROPY_TOKENS_KEY,
    ENTROPY_TOPK_KEY,
    TOPK_ENTROPY_FIELD,
)

__all__ = [
    "ENTROPY_TOKENS_KEY",
    "ENTROPY_TOPK_KEY",
    "TOPK_ENTROPY_FIELD",
    "ArcherVLLMHttpServer",
    "ArcherVLLMReplica",
    "install",
]


def position_topk(position: Mapping[Any, Any] | None, k: int) -> list[float]:
    """The k largest finite log-probs of one generated position of a vLLM output (token id ->
    `Logprob`, or a bare float). vLLM returns the top k plus the sampled token when it is not
    among them; the sampled token's log-prob never exceeds the k-th, so the k largest are the top k."""
    if position is None:
        raise ValueError("vLLM returned no log-probs for a generated token (logprobs was not set)")
    values = [float(getattr(v, "logprob", v)) for v in position.values()]
    values = sorted((v for v in values if math.isfinite(v)), reverse=True)
    return values[:k]


def topk_entropies(positions: Iterable[Mapping[Any, Any] | None], k: int, vocab_size: int) -> list[float]:
    """Per generated token, the top-k truncated entropy -Σ p log p from vLLM's log-probs."""
    out = []
    for position in positions:
        top = position_topk(position, k)
        out.append(topk_entropy(top, vocab_size).truncated if top else 0.0)
    return out


class _Requests:
    """The top-k requests in flight on one server: request id -> (k, first N tokens or 0 for all),
    and their results."""

    def __init__(self, vocab_size: int):
        self.vocab_size = int(vocab_size)
        self.wanted: dict[str, tuple[int, int]] = {}
        self.entropies: dict[str, list[float]] = {}


class TopkLogprobsEngine:
    """vLLM's engine client as verl's server uses it, with `generate` asking for k log-probs on
    archer's requests and keeping their top-k entropies; everything else goes to the engine."""

    def __init__(self, engine: Any, requests: _Requests):
        self._engine = engine
        self._requests = requests

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        request_id = kwargs.get("request_id", args[2] if len(args) > 2 else None)
        wanted = self._requests.wanted.get(request_id)
        if not wanted:
            return self._engine.generate(*args, **kwargs)
        k, first = wanted
        params = kwargs["sampling_params"] if "sampling_params" in kwargs else args[1]
        params.logprobs = max(int(params.logprobs or 0), int(k))
        return self._capture(self._engine.generate(*args, **kwargs), request_id, int(k), int(first))

    async def _capture(
        self, outputs: AsyncIterator[Any], request_id: str, k: int, first: int
    ) -> AsyncIterator[Any]:
        last = None
        try:
            async for out in outputs:
                last = out
                yield out
        finally:  # a cancelled caller closes vLLM's generator now (vLLM aborts the request there)
            close = getattr(outputs, "aclose", None)
            if close is not None:
                await close()
        if last is not None and last.outputs:
            n = len(last.outputs[0].token_ids)
            n = min(n, first) if first > 0 else n
            logprobs = last.outputs[0].logprobs
            positions = list(logprobs[:n]) if logprobs is not None else [None] * n
            self._requests.entropies[request_id] = topk_entropies(positions, k, self._requests.vocab_size)


class ArcherVLLMHttpServer(vLLMHttpServer):
    """verl's vLLM server; a request with `archer_entropy_topk` also gets per-token top-k entropies."""

    def _archer_requests(self) -> _Requests:
        state = self.__dict__.get("_archer_topk")
        if state is None:
            hf = self.model_config.hf_config
            vocab = int(getattr(hf, "vocab_size", 0) or len(self.model_config.tokenizer))
            state = self.__dict__["_archer_topk"] = _Requests(vocab)
        return state

    @property
    def engine(self) -> Any:
        try:
            return self.__dict__["_archer_engine"]
        except KeyError:
            raise AttributeError("engine") from None

    @engine.setter
    def engine(self, client: Any) -> None:
        if client is not None and not isinstance(client, TopkLogprobsEngine):
            client = TopkLogprobsEngine(client, self._archer_requests())
        self.__dict__["_archer_engine"] = client

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        *args: Any,
        **kwargs: Any,
    ) -> TokenOutput:
        k = int(sampling_params.pop(ENTROPY_TOPK_KEY, 0) or 0)
        first = int(sampling_params.pop(ENTROPY_TOKENS_KEY, 0) or 0)
        if k <= 0:
            return await super().generate(prompt_ids, sampling_params, request_id, *args, **kwargs)
        if self._disaggregation_role != "null":
            raise ValueError(
                "top-k entropies (archer's agent loop) need a vLLM replica without PD disaggregation"
            )
        mode = str(getattr(self.config, "logprobs_mode", None) or "processed_logprobs")
        if not mode.endswith("_logprobs"):  # *_logits modes return logits, which are no probabilities
            raise ValueError(
                f"top-k entropies need log-probs from vLLM, not rollout.logprobs_mode={mode} "
                "(use processed_logprobs, verl's default)"
            )
        asked = bool(sampling_params.get("logprobs", False))
        requests = self._archer_requests()
        requests.wanted[request_id] = (k, first)
        try:
            out = await super().generate(prompt_ids, sampling_params, request_id, *args, **kwargs)
            entropies = requests.entropies.pop(request_id, None)
        finally:
            requests.wanted.pop(request_id, None)
            requests.entropies.pop(request_id, None)
        if out.stop_reason != "aborted" or entropies is not None:
            n = min(len(out.token_ids), first) if first > 0 else len(out.token_ids)
            if entropies is None or len(entropies) != n:
                raise RuntimeError(
                    f"vLLM request {request_id}: {len(out.token_ids)} tokens, top-k entropies for "
                    f"{'none' if entropies is None else len(entropies)}"
                )
            out.extra_fields[TOPK_ENTROPY_FIELD] = entropies
        if not asked:
            out.log_probs = None
        return out


class ArcherVLLMReplica(vLLMReplica):
    """verl's vLLM replica whose servers are `ArcherVLLMHttpServer`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(ArcherVLLMHttpServer)


def _load_replica() -> type:
    return ArcherVLLMReplica


def install() -> None:
    """verl's replica registry gives archer's vLLM replica for `rollout.name=vllm` (this process)."""
    RolloutReplicaRegistry.register("vllm", _load_replica)
