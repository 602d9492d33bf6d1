"""archer's `hf` rollout backend for verl (archer/core/engines/verl/rollout_hf.py) and the CPU
platform's activation rule, without Ray: the adapter built as verl's worker builds it, its
log-probs against a plain forward, batching of concurrent requests, the weight hand-off, the
sampling parameters as vLLM reads them; the config a CPU run composes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

import torch  # noqa: E402
import verl_cpu_platform  # noqa: E402,F401
import verl_harness as H  # noqa: E402

pytestmark = pytest.mark.verl
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return H.save_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=3)


def make_adapter(model_dir, **overrides):
    from verl.workers.config import HFModelConfig, RolloutConfig

    from archer.core.engines.verl.rollout_hf import HFRollout

    kw = dict(name="hf", tensor_model_parallel_size=1, prompt_length=16, response_length=6, dtype="float32")
    kw.update(overrides)
    return HFRollout(
        config=RolloutConfig(**kw), model_config=HFModelConfig(path=str(model_dir)), device_mesh=None
    )


def test_log_probs_of_a_padded_batch_equal_each_row_alone(model_dir):
    from transformers import AutoModelForCausalLM

    from archer.core.engines.verl.rollout_hf import response_log_probs
    from archer.core.rollout.batch import left_pad, right_pad

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    responses = [torch.tensor([20, 21, 1]), torch.tensor([22]), torch.tensor([23, 24, 25, 26])]
    pids, pmask = left_pad(prompts, 0)
    rids = right_pad(responses, 0)
    for T in (1.0, 0.7):
        batch = response_log_probs(model, pids, pmask, rids, T)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ids = torch.tensor([p + r.tolist()])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(p) - 1 : -1].float() / T
            alone = torch.log_softmax(logits, -1).gather(-1, r.unsqueeze(-1)).squeeze(-1)
            torch.testing.assert_close(batch[i, : len(r)], alone, atol=1e-5, rtol=0)


def test_concurrent_requests_are_batched_and_answer_like_greedy_generate(model_dir):
    from archer.core.rollout.generation import generate

    adapter = make_adapter(model_dir)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]]
    params = {"temperature": 0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
    calls = []
    real = adapter._decode
    adapter._decode = lambda ps, key: calls.append(len(ps)) or real(ps, key)

    async def go():
        return await asyncio.gather(
            *[adapter.generate(p, dict(params), f"r{i}") for i, p in enumerate(prompts)]
        )

    outs = asyncio.run(go())
    assert sum(calls) == len(prompts) and len(calls) < len(prompts)  # batched, every request once
    ref = generate(adapter.model, adapter.tokenizer, prompts, n=1, max_new_tokens=6, temperature=0.0)
    for i, out in enumerate(outs):
        L = int(ref.response_lengths[i])
        assert out.token_ids == ref.response_ids[i, :L].tolist()
        assert len(out.log_probs) == len(out.token_ids) and all(lp <= 0 for lp in out.log_probs)
        assert out.stop_reason == "completed" and "global_steps" in out.extra_fields
        assert len(out.token_ids) <= 6
        if L < 6:
            assert out.token_ids[-1] in adapter.eos_ids  # stopped on EOS, which is kept (as vLLM)


def test_entropy_requests_get_the_exact_entropy_of_every_sampled_position(model_dir):
    """archer's agent loop asks for `archer_entropy_topk`: the reply carries, per generated token,
    the exact entropy of log_softmax(logits / T) and ARPO's top-k truncated entropy, as a plain
    forward over prompt + response gives them; a request without the key gets neither."""
    from archer.core.agent.branching import token_entropies

    adapter = make_adapter(model_dir)
    T, k = 0.8, 5
    params = {"temperature": T, "top_p": 1.0, "top_k": -1, "logprobs": True, "archer_entropy_topk": k}
    params["archer_entropy_tokens"] = 2  # the agent loop sends it too; this server returns all tokens
    prompt = [5, 6, 7, 8]
    out = asyncio.run(adapter.generate(prompt, dict(params), "e"))
    full, trunc = out.extra_fields["archer_entropy"], out.extra_fields["archer_topk_entropy"]
    assert len(full) == len(trunc) == len(out.token_ids)
    ids = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logits = adapter.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    ref_full, ref_trunc = token_entropies(logits, T, k)
    torch.testing.assert_close(torch.tensor(full), ref_full, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(trunc), ref_trunc, atol=1e-4, rtol=0)
    assert all(t <= f + 1e-6 for t, f in zip(trunc, full))
    del params["archer_entropy_topk"]
    plain = asyncio.run(adapter.generate(prompt, dict(params), "p"))
    assert "archer_entropy" not in plain.extra_fields


def test_weights_arrive_by_name_and_every_parameter_must_be_written(model_dir):
    adapter = make_adapter(model_dir)
    params = {"temperature": 0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    before = asyncio.run(adapter.generate([5, 6, 7], dict(params), "a"))
    new = {k: torch.randn_like(v) for k, v in adapter.model.state_dict().items()}
    asyncio.run(adapter.update_weights(iter(new.items()), global_steps=7))
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, new[k]), k
    after = asyncio.run(adapter.generate([5, 6, 7], dict(params), "b"))
    assert after.extra_fields["global_steps"] == 7
    assert (after.token_ids, after.log_probs) != (before.token_ids, before.log_probs)
    partial = list(new.items())[1:]
    with pytest.raises(RuntimeError, match="not written"):
        asyncio.run(adapter.update_weights(iter(partial)))
    with pytest.raises(RuntimeError, match="unknown"):
        asyncio.run(adapter.update_weights(iter([*new.items(), ("no.such.weight", torch.zeros(1))])))


def test_sampling_parameters_read_as_vllm_reads_them():
    from archer.core.engines.verl.rollout_hf import sampling_key

    assert sampling_key({"temperature": 0.7, "top_p": 0.9, "top_k": -1}, 10, 16, 8) == (0.7, 0.9, 0, 8)
    assert sampling_key({"top_k": 5, "max_tokens": 3}, 10, 16, 8)[2:] == (5, 3)
    assert sampling_key({"max_tokens": 50}, 20, 16, 8)[3] == 4  # never past prompt_length + response_length
    with pytest.raises(ValueError, match="repetition_penalty"):
        sampling_key({"repetition_penalty": 1.1}, 1, 16, 8)


def test_the_replica_serves_from_the_worker_in_hybrid_mode_only():
    from verl.workers.config import RolloutConfig
    from verl.workers.rollout.replica import RolloutMode, RolloutReplicaRegistry

    from archer.core.engines.verl import plugin
    from archer.core.engines.verl.rollout_hf import HFReplica

    # the plugin registers when verl's core_algos loads (an import hook), which a process that only
    # builds replicas may never import: register explicitly, as verl's trainer process has by then
    plugin.register()

    assert RolloutReplicaRegistry.get("hf") is HFReplica
    replica = HFReplica(0, RolloutConfig(name="hf", tensor_model_parallel_size=1), None, gpus_per_node=1)
    replica.rollout_mode, replica.workers = RolloutMode.HYBRID, ["worker-0"]
    asyncio.run(replica.launch_servers())
    assert replica.server_handle == "worker-0" and replica.server_address == "hf-0"
    asyncio.run(replica.sleep())  # lifecycle calls are no-ops: nothing to reach on the handle
    asyncio.run(replica.wake_up())
    replica.rollout_mode = RolloutMode.STANDALONE
    with pytest.raises(NotImplementedError, match="hybrid"):
        asyncio.run(replica.launch_servers())


def _platform_in_subprocess(cuda: bool) -> str:
    code = (
        "import torch\n"
        f"torch.cuda.is_available = lambda: {cuda}\n"
        "import verl\n"
        "from archer.core.engines.verl import plugin\n"
        "plugin.register()\n"
        "from verl.plugin.platform import get_platform\n"
        "print('PLATFORM', type(get_platform()).__name__, get_platform().device_name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return next(line for line in r.stdout.splitlines() if line.startswith("PLATFORM"))


def test_cpu_platform_only_where_no_accelerator_is_present():
    assert _platform_in_subprocess(cuda=False) == "PLATFORM PlatformCPU cpu"
    assert "PlatformCPU" not in _platform_in_subprocess(cuda=True)


def test_a_cpu_run_composes_the_cpu_and_hf_settings():
    from archer.core.config.compose import compose
    from archer.core.engines.verl.config import compose_verl

    composed = compose(
        "math-influence",
        ["model.path=/m", "data.train_files=[/d.parquet]", "trainer.device=cpu", "rollout.backend=hf"],
    )
    s = compose_verl(composed, Path("/runs/r")).select
    assert s("trainer.device") == "cpu" and s("trainer.n_gpus_per_node") == 1
    assert s("actor_rollout_ref.rollout.name") == "hf"
    assert s("actor_rollout_ref.rollout.tensor_model_parallel_size") == 1
    assert s("actor_rollout_ref.rollout.free_cache_engine") is False
    assert s("transfer_queue.backend.SimpleStorage.num_data_storage_units") == 1
    assert s("actor_rollout_ref.rollout.agent.num_workers") == 1 and s("reward.num_workers") == 1
    gpu = compose_verl(
        compose("math-influence", ["model.path=/m", "data.train_files=[/d.parquet]"]), Path("/r")
    )
    assert gpu.select("actor_rollout_ref.rollout.name") == "vllm"
    assert gpu.select("transfer_queue.backend.SimpleStorage.num_data_storage_units") == 8
