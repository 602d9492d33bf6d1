"""Shared fixtures of the influence tests: a tiny float64 Qwen2 (math SDPA, no dropout) and a
batch of prompt groups laid out padded ([left-padded prompt | right-padded response]) or packed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from archer.influence.scoring import ResponseMeta
from archer.influence.settings import InfluenceSettings
from archer.influence.tracer import packed_positions, padded_positions

VOCAB = 24


def tiny_model(seed: int = 0, layers: int = 2, hidden: int = 16, inter: int = 32) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).double().train()
    for mod in model.modules():  # HF's RMSNorm computes in float32; keep everything in float64
        if type(mod).__name__ == "Qwen2RMSNorm":
            mod.forward = _rms_norm_float64.__get__(mod)
    return model


def _rms_norm_float64(self, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@dataclass
class Batch:
    prompts: list[list[int]]
    responses: list[list[int]]
    groups: list[int]
    rewards: list[float]

    @property
    def rows(self) -> list[int]:
        return list(range(len(self.responses)))

    def metas(
        self, output_function: str = "log_prob", advantages: list[float] | None = None
    ) -> list[ResponseMeta]:
        from archer.influence.selection import accepted_mask
        from archer.influence.tracer import response_sign

        acc = accepted_mask(self.rewards, self.groups)
        adv = advantages or [r - 0.5 for r in self.rewards]
        return [
            ResponseMeta(
                row=i,
                group=self.groups[i],
                accepted=acc[i],
                sign=response_sign(output_function, adv[i], self.rewards[i]),
            )
            for i in self.rows
        ]

    def lengths(self) -> dict[int, int]:
        return {i: len(r) for i, r in enumerate(self.responses)}


def make_batch(seed: int = 0, mixed_groups: int = 3, n: int = 4, degenerate: bool = True) -> Batch:
    g = torch.Generator().manual_seed(seed)
    prompts, responses, groups, rewards = [], [], [], []
    plan = [("mixed", k) for k in range(mixed_groups)]
    if degenerate:
        plan += [("all_ok", mixed_groups), ("all_bad", mixed_groups + 1)]
    for kind, gid in plan:
        P = int(torch.randint(2, 6, (1,), generator=g))
        prompt = torch.randint(3, VOCAB, (P,), generator=g).tolist()
        for s in range(n):
            L = int(torch.randint(2, 8, (1,), generator=g))
            responses.append(torch.randint(3, VOCAB, (L,), generator=g).tolist())
            prompts.append(prompt)
            groups.append(gid)
            if kind == "mixed":
                rewards.append(1.0 if s < 2 else 0.0)
            else:
                rewards.append(1.0 if kind == "all_ok" else 0.0)
    return Batch(prompts, responses, groups, rewards)


@dataclass
class Padded:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_width: int
    response_width: int


def pad_rows(batch: Batch, rows: list[int]) -> Padded:
    P = max(len(batch.prompts[r]) for r in rows)
    R = max(len(batch.responses[r]) for r in rows)
    ids = torch.zeros((len(rows), P + R), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        p, resp = batch.prompts[r], batch.responses[r]
        ids[i, P - len(p) : P] = torch.tensor(p)
        ids[i, P : P + len(resp)] = torch.tensor(resp)
        mask[i, P - len(p) : P + len(resp)] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Padded(ids, mask, pos, P, R)


def padded_logprob_terms(model, batch: Batch, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, Padded]:
    """(log-prob of every response token [b, R], its mask [b, R], the padded inputs)."""
    pb = pad_rows(batch, rows)
    out = model(input_ids=pb.input_ids, attention_mask=pb.attention_mask, position_ids=pb.position_ids)
    logits = out.logits[:, pb.prompt_width - 1 : pb.prompt_width - 1 + pb.response_width]
    labels = pb.input_ids[:, pb.prompt_width : pb.prompt_width + pb.response_width]
    logp = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    mask = torch.zeros_like(logp)
    for i, r in enumerate(rows):
        mask[i, : len(batch.responses[r])] = 1
    return logp, mask, pb


def capture_positions(batch: Batch, rows: list[int], pb: Padded, max_tokens: int = 0):
    return padded_positions(
        rows,
        list(range(len(rows))),
        [len(batch.responses[r]) for r in rows],
        seq_len=pb.input_ids.shape[1],
        prompt_width=pb.prompt_width,
        max_tokens=max_tokens,
    )


def packed_inputs(batch: Batch, rows: list[int]):
    """Packed [1, total] inputs with a block-diagonal causal 4D mask (what remove-padding does)."""
    seqs = [batch.prompts[r] + batch.responses[r] for r in rows]
    cu = [0]
    for s in seqs:
        cu.append(cu[-1] + len(s))
    ids = torch.tensor([t for s in seqs for t in s])[None]
    pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    seg = torch.cat([torch.full((len(s),), k) for k, s in enumerate(seqs)])
    N = ids.shape[1]
    allowed = (seg[:, None] == seg[None, :]) & (torch.arange(N)[:, None] >= torch.arange(N)[None, :])
    positions = packed_positions(
        rows, cu, [len(batch.prompts[r]) for r in rows], [len(batch.responses[r]) for r in rows]
    )
    return ids, pos, allowed[None, None], cu, positions


def settings(**kw) -> InfluenceSettings:
    base = dict(
        enable=True,
        module_name_filter=r"(mlp\.down_proj|self_attn\.o_proj)$",
        max_modules=0,
        max_hessian_dim=0,
        max_proj_vector_sum=0,
        projection_dim_factor=1,
        output_function="log_prob",
        storage_dtype="fp32",
    )
    base.update(kw)
    return InfluenceSettings(**base)
