"""archer's vLLM server for the agent loop (archer/core/engines/verl/rollout_vllm.py) without vLLM:
verl's real `vLLMHttpServer.generate` (imported against a stand-in `vllm` package, fake_vllm.py)
runs with a fake engine that answers as vLLM's AsyncLLM does (cumulative RequestOutputs whose
`logprobs` hold, per generated token, a dict token -> Logprob with the top `logprobs` entries plus
the sampled token). The entropies expected are computed from the engine's whole distribution."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

import fake_vllm  # noqa: E402
import torch  # noqa: E402

pytestmark = pytest.mark.verl
V = 50  # the fake model's vocabulary


@pytest.fixture(scope="module")
def rv():
    with fake_vllm.installed():
        from archer.core.engines.verl import rollout_vllm

        yield rollout_vllm


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput (the fields verl reads)
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    index: int = 0


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    outputs: list[CompletionOutput]
    prompt_logprobs: list | None = None
    num_cached_tokens: int = 0


def distribution(prompt: list[int], step: int, temperature: float) -> torch.Tensor:
    """The fake model's log-probs at one step: a Zipf-like shape over a permutation of the vocab."""
    gen = torch.Generator().manual_seed(1000 * sum(prompt) + step)
    logits = -1.3 * torch.arange(1, V + 1, dtype=torch.float64).log()
    logits = logits[torch.randperm(V, generator=gen)]
    return torch.log_softmax(logits / temperature, -1)


@dataclass
class FakeEngine:
    """vLLM's AsyncLLM as verl's server calls it: `generate(prompt=, sampling_params=, request_id=,
    ...)` an async generator of cumulative outputs. Token t samples the (t % 7 + 1)-th most likely
    token, so some sampled tokens lie outside a small top k (vLLM then adds them as an extra entry)."""

    tokens: int = 6
    seen: list = field(default_factory=list)

    async def generate(self, prompt, sampling_params, request_id, lora_request=None, priority=0):
        self.seen.append((request_id, sampling_params.logprobs))
        ids = list(prompt["prompt_token_ids"])
        n = min(self.tokens, int(sampling_params.max_tokens))
        token_ids, logprobs = [], []
        for t in range(n):
            logp = distribution(ids, t, sampling_params.temperature)
            order = logp.argsort(descending=True).tolist()
            tok = order[t % 7]
            token_ids.append(tok)
            k = sampling_params.logprobs
            if k is None:
                logprobs = None
            else:
                entry = {i: Logprob(float(logp[i]), r + 1) for r, i in enumerate(order[:k])}
                entry[tok] = Logprob(float(logp[tok]), order.index(tok) + 1)
                logprobs.append(entry)
            await asyncio.sleep(0)
            yield RequestOutput(
                request_id,
                [CompletionOutput(list(token_ids), None if logprobs is None else list(logprobs))],
            )
        yield RequestOutput(request_id, [CompletionOutput(token_ids, logprobs, finish_reason="length")])


def make_server(rv, engine):
    from omegaconf import OmegaConf

    srv = object.__new__(rv.ArcherVLLMHttpServer)
    srv.config = OmegaConf.create(
        {
            "max_model_len": 256,
            "prompt_length": 64,
            "response_length": 32,
            "full_determinism": False,
            "enable_rollout_routing_replay": False,
            "mtp": None,
        }
    )
    srv.model_config = SimpleNamespace(
        processor=None, hf_config=SimpleNamespace(vocab_size=V), tokenizer=None, lora_rank=0, lora={}
    )
    srv._disaggregation_role = "null"
    srv._pd_decode_peers = []
    srv._submission_paused = False
    srv._rejecting = False
    srv._admitting = 0
    srv.global_steps = 7
    srv.replica_rank = 0
    srv.engine = engine  # as verl's run_server assigns vLLM's AsyncLLM
    return srv


def expected(prompt: list[int], n: int, k: int, temperature: float) -> tuple[list[float], list[float]]:
    """(top-k truncated entropy, sampled log-prob) per token, from the whole distribution."""
    from archer.core.agent.branching import token_entropies

    hs, lps = [], []
    for t in range(n):
        logp = distribution(prompt, t, temperature)
        _, trunc = token_entropies(logp.float()[None], 1.0, k)
        hs.append(float(trunc[0]))
        lps.append(float(logp[logp.argsort(descending=True)[t % 7]]))
    return hs, lps


def test_a_topk_request_asks_vllm_for_k_logprobs_and_returns_the_topk_entropy_per_token(rv):
    engine = FakeEngine()
    srv = make_server(rv, engine)
    prompt = [3, 4, 5]
    params = {"temperature": 0.8, "top_p": 1.0, "logprobs": True, rv.ENTROPY_TOPK_KEY: 5}
    out = asyncio.run(  # as verl's LLMServerClient calls it (server.generate.remote(...))
        srv.generate(
            request_id="req-a",
            prompt_ids=prompt,
            sampling_params=dict(params),
            image_data=None,
            video_data=None,
        )
    )
    assert engine.seen == [("req-a", 5)]  # verl alone would send logprobs=0
    hs, lps = expected(prompt, engine.tokens, 5, 0.8)
    assert len(out.token_ids) == engine.tokens
    assert out.extra_fields[rv.TOPK_ENTROPY_FIELD] == pytest.approx(hs, abs=1e-5)
    assert out.log_probs == pytest.approx(lps, abs=1e-9)  # still the sampled tokens' log-probs
    assert out.extra_fields["global_steps"] == 7
    # the k+1-th entry vLLM adds for a sampled token outside the top k is not summed: the 6th and
    # 7th tokens (rank 6 and 7) would raise the entropy if it were
    wrong = [h - lp * math.exp(lp) if t % 7 >= 5 else h for t, (h, lp) in enumerate(zip(hs, lps))]
    assert out.extra_fields[rv.TOPK_ENTROPY_FIELD] != pytest.approx(wrong, abs=1e-5)
    assert not srv._archer_requests().wanted and not srv._archer_requests().entropies


def test_a_plain_request_is_verls_and_a_topk_one_without_logprobs_returns_none(rv):
    engine = FakeEngine()
    srv = make_server(rv, engine)
    plain = asyncio.run(srv.generate([1, 2], {"temperature": 1.0, "logprobs": True}, "req-p"))
    assert engine.seen[-1] == ("req-p", 0)
    assert rv.TOPK_ENTROPY_FIELD not in plain.extra_fields
    _, lps = expected([1, 2], engine.tokens, 3, 1.0)
    assert plain.log_probs == pytest.approx(lps, abs=1e-9)
    quiet = asyncio.run(srv.generate([1, 2], {"temperature": 1.0, rv.ENTROPY_TOPK_KEY: 3}, "req-q"))
    assert engine.seen[-1] == ("req-q", 3)
    assert quiet.log_probs is None
    hs, _ = expected([1, 2], engine.tokens, 3, 1.0)
    assert quiet.extra_fields[rv.TOPK_ENTROPY_FIELD] == pytest.approx(hs, abs=1e-5)


def test_concurrent_requests_each_get_their_own_k_and_entropies(rv):
    engine = FakeEngine()
    srv = make_server(rv, engine)
    prompts = {f"r{i}": [i + 1, 2 * i + 3] for i in range(6)}
    ks = {rid: [2, 10, 0][i % 3] for i, rid in enumerate(prompts)}

    async def all_of_them():
        def params(rid):
            p = {"temperature": 1.0, "logprobs": True}
            if ks[rid]:
                p[rv.ENTROPY_TOPK_KEY] = ks[rid]
            return p

        outs = await asyncio.gather(*(srv.generate(prompts[r], params(r), r) for r in prompts))
        return dict(zip(prompts, outs))

    outs = asyncio.run(all_of_them())
    assert dict(engine.seen) == {rid: k for rid, k in ks.items()}
    for rid, out in outs.items():
        if ks[rid]:
            hs, _ = expected(prompts[rid], engine.tokens, ks[rid], 1.0)
            assert out.extra_fields[rv.TOPK_ENTROPY_FIELD] == pytest.approx(hs, abs=1e-5)
        else:
            assert rv.TOPK_ENTROPY_FIELD not in out.extra_fields


def test_a_request_naming_its_first_tokens_gets_their_entropies_only(rv):
    """One reply is one segment, whose first agent.entropy_tokens the rule reads: the server
    computes those and no more; the sampled log-probs still cover every token."""
    engine = FakeEngine(tokens=6)
    srv = make_server(rv, engine)
    params = {"temperature": 1.0, "logprobs": True, rv.ENTROPY_TOPK_KEY: 4, rv.ENTROPY_TOKENS_KEY: 3}
    out = asyncio.run(srv.generate([2, 7], dict(params), "req-n"))
    hs, lps = expected([2, 7], 6, 4, 1.0)
    assert out.extra_fields[rv.TOPK_ENTROPY_FIELD] == pytest.approx(hs[:3], abs=1e-5)
    assert out.log_probs == pytest.approx(lps, abs=1e-9) and len(out.token_ids) == 6
    params[rv.ENTROPY_TOKENS_KEY] = 50  # more than were generated: all of them
    out = asyncio.run(srv.generate([2, 7], dict(params), "req-m"))
    assert out.extra_fields[rv.TOPK_ENTROPY_FIELD] == pytest.approx(hs, abs=1e-5)


def test_logits_instead_of_log_probs_are_refused(rv):
    engine = FakeEngine()
    srv = make_server(rv, engine)
    srv.config.logprobs_mode = "processed_logits"
    with pytest.raises(ValueError, match="logprobs_mode=processed_logits"):
        asyncio.run(srv.generate([1], {"temperature": 1.0, rv.ENTROPY_TOPK_KEY: 3}, "req-l"))
    assert engine.seen == []
    asyncio.run(srv.generate([1], {"temperature": 1.0}, "req-plain"))  # verl's own requests still run
    assert engine.seen == [("req-plain", None)]


def test_masked_tokens_add_nothing_and_missing_logprobs_are_an_error(rv):
    lp = [math.log(0.5), math.log(0.3), -math.inf, math.log(0.2)]
    position = {i: Logprob(v, i + 1) for i, v in enumerate(lp)}
    want = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert rv.topk_entropies([position], 10, V) == pytest.approx([want])
    assert rv.topk_entropies([position], 2, V) == pytest.approx(
        [-(0.5 * math.log(0.5) + 0.3 * math.log(0.3))]
    )
    with pytest.raises(ValueError, match="no log-probs"):
        rv.topk_entropies([None], 5, V)


def test_the_agent_loops_segment_entropy_from_vllm_equals_the_exact_topk_one(rv):
    """GroupRollout (the agent loop's per-prompt code) fed by the server, as agent_loop.py feeds it:
    the first segment's entropy is the summed top-k entropies of its first tokens over ln V."""
    from archer.core.agent.branching import BranchSettings, segment_entropy
    from archer.core.agent.group import Generation, GroupRollout, ToolReply

    engine = FakeEngine(tokens=8)
    srv = make_server(rv, engine)
    k, first = 4, 5
    settings = BranchSettings(n=1, initial_rollouts=1, entropy_tokens=first, entropy_topk=k, mode="none")
    counter = iter(range(100))

    async def generate(context, max_tokens):
        params = {
            "temperature": 1.0,
            "logprobs": True,
            "max_tokens": max_tokens,
            rv.ENTROPY_TOPK_KEY: k,
            rv.ENTROPY_TOKENS_KEY: first,  # as agent_loop.py sends them
        }
        out = await srv.generate(context, params, f"g{next(counter)}")
        return Generation(list(out.token_ids), out.log_probs, out.extra_fields.get(rv.TOPK_ENTROPY_FIELD))

    async def call_tool(tool, content):
        return ToolReply("", "ok")

    group = GroupRollout(
        settings,
        generate=generate,
        call_tool=call_tool,
        encode=lambda s: [1] * len(s),
        piece=lambda t: "x",
        eos_ids=[],
        tools=("python",),
        vocab_size=V,
        max_response_tokens=8,
        max_turns=1,
        rng=random.Random(0),
    )
    result = asyncio.run(group.run([9, 9]))
    (traj,) = result.trajectories
    hs, lps = expected([9, 9], 8, k, 1.0)
    assert traj.seg_hs == pytest.approx([segment_entropy(sum(hs[:first]), V)], abs=1e-6)
    assert traj.log_probs == pytest.approx(lps, abs=1e-9)
    assert engine.seen == [("g0", k)]


def test_install_makes_verls_registry_give_archers_replica(rv):
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    before = RolloutReplicaRegistry._registry.get("vllm")
    try:
        rv.install()
        assert RolloutReplicaRegistry.get("vllm") is rv.ArcherVLLMReplica
        assert issubclass(rv.ArcherVLLMHttpServer, rv.vLLMHttpServer)
    finally:
        RolloutReplicaRegistry._registry["vllm"] = before
