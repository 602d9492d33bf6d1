"""Samplers: K completions for each of a batch of tokenized prompts, from one of two engines.

- `LocalSampler` uses archer's batched Hugging Face `generate` rollouts (CPU or one GPU); the same
  code the local engine trains with, so evaluation sees the same prompts and EOS handling.
- `VLLMSampler` uses vLLM's offline `LLM.generate` with `SamplingParams(n=K, ...)`; it needs the
  `vllm` extra (GPU machines). `require_vllm` says so clearly when it is missing.

Both return, per prompt, K `Completion`s: the response token ids (including the EOS when the
model stopped), the decoded text (special tokens dropped) and whether the response hit the
token limit.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from archer.errors import ArcherError

ENGINES = ("local", "vllm")


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    truncated: bool


class Sampler(Protocol):
    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int | None,
    ) -> list[list[Completion]]: ...


def batch_seed(seed: int, first_problem: int) -> int:
    """The seed of the batch starting at `first_problem`: a resumed run redraws a batch exactly."""
    return (int(seed) * 1_000_003 + int(first_problem)) % (2**63 - 1)


class LocalSampler:
    """HF `generate` on a loaded model; `seed=None` leaves the global RNG alone (training's validation)."""

    def __init__(self, model: Any, tokenizer: Any, *, device: Any = "cpu", max_rows: int = 0):
        self.model, self.tokenizer, self.device, self.max_rows = model, tokenizer, device, max_rows

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        import torch

        from archer.core.rollout.generation import decode_responses, generate

        if seed is not None:
            torch.manual_seed(seed)
        ro = generate(
            self.model,
            self.tokenizer,
            [list(p) for p in prompts],
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            batch_size=self.max_rows,
            device=self.device,
        )
        texts = decode_responses(self.tokenizer, ro)
        lengths = ro.response_lengths.tolist()
        out: list[list[Completion]] = [[] for _ in prompts]
        for row, (g, text) in enumerate(zip(ro.group, texts)):
            ids = ro.response_ids[row, : int(lengths[row])].tolist()
            out[g].append(Completion(token_ids=ids, text=text, truncated=bool(ro.truncated[row])))
        return out


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    """Refuse the vllm engine, with the fix, when vLLM is not importable here."""
    if not vllm_installed():
        raise ArcherError(
            "the vllm engine needs vLLM, and the 'vllm' extra is not installed in this environment",
            hint="on a GPU machine: pip install 'archer[vllm]'; here, use --engine local (HF generate)",
        )


class VLLMSampler:
    """vLLM's offline engine over a Hugging Face model folder (one process, its own GPU memory)."""

    def __init__(
        self,
        model_dir: Path,
        tokenizer_dir: Path,
        *,
        dtype: str = "auto",
        seed: int = 0,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
    ):
        require_vllm()
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "tokenizer": str(tokenizer_dir),
            "dtype": dtype,
            "seed": seed,
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "trust_remote_code": trust_remote_code,
        }
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:
            raise ArcherError(
                f"vLLM could not load {model_dir}: {type(e).__name__}: {e}".splitlines()[0],
                hint=(
                    "check that a GPU is visible and the folder is a Hugging Face model; or use --engine "
                    "local"
                ),
            ) from e

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        # one SamplingParams per prompt, each with its own seed: the draws of a problem do not
        # depend on which other problems share its batch, so a resumed run redraws them exactly
        params = [
            SamplingParams(
                n=n,
                temperature=float(temperature),
                top_p=float(top_p) if temperature > 0 else 1.0,
                max_tokens=int(max_new_tokens),
                seed=None if seed is None else seed + i,
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        result: list[list[Completion]] = []
        for out in outputs:
            result.append(
                [
                    Completion(
                        token_ids=list(c.token_ids), text=c.text, truncated=c.finish_reason == "length"
                    )
                    for c in out.outputs
                ]
            )
        return result
