"""A batched decode loop over an HF causal LM with one KV cache for every live trajectory.

HF `generate` cannot pause one sequence for a tool, feed it the tool's tokens and fork it. Here
every `step` appends one column for all rows: a row with something to feed (a sampled token, a
tool-result token, a fresh prompt token) feeds it; a paused row feeds a pad with attention mask 0,
so rows accumulate masked *holes* that attention ignores. Position ids advance only on real
tokens, so a row's positions are exactly those of its real tokens and a later full forward over
[prompt | response] reproduces the same logits. `select(rows)` index-selects cache rows: branching
duplicates a row (its prefix is copied, never recomputed) and compaction drops finished rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from archer.core.rollout.batch import left_pad


class HFDecoder:
    """Rows of one KV cache; `logits` returned are float32 [rows, vocab] for each row's last real token."""

    def __init__(self, model: Any, pad_id: int, device: torch.device | str = "cpu"):
        self.model = model
        self.pad_id = int(pad_id)
        self.device = torch.device(device)
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.next_pos = torch.zeros(0, dtype=torch.long, device=self.device)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        from transformers import DynamicCache

        ids, mask = left_pad(prompts, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.mask = mask
        self.next_pos = mask.sum(-1)
        return out.logits[:, -1].float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (`real` False: a pad the row's attention never sees)."""
        real = real.to(self.device)
        ids = torch.where(
            real, tokens.to(self.device), torch.full_like(tokens, self.pad_id, device=self.device)
        )
        self.mask = torch.cat([self.mask, real.long()[:, None]], dim=1)
        out = self.model(
            input_ids=ids[:, None],
            attention_mask=self.mask,
            position_ids=self.next_pos[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.next_pos = self.next_pos + real.long()
        return out.logits[:, -1].float()

    def select(self, rows: torch.Tensor) -> None:
        """Keep, reorder or duplicate rows (`rows` indexes the current rows; repeats fork)."""
        rows = rows.to(self.device)
        self.cache.reorder_cache(rows)
        self.mask = self.mask[rows]
        self.next_pos = self.next_pos[rows]

    def add_empty(self, k: int) -> None:
        """Append `k` rows that have seen nothing yet (their prompt is then fed token by token):
        copies of row 0 with every column masked, so the copied keys are never attended to."""
        if k <= 0:
            return
        idx = torch.cat([torch.arange(self.rows), torch.zeros(k, dtype=torch.long)])
        self.select(idx)
        self.mask[-k:] = 0
        self.next_pos[-k:] = 0
