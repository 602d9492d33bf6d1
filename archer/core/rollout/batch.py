"""The rollout record every engine and the agent share: n sampled responses per prompt, left-padded
prompts, right-padded responses cut at the first EOS (the EOS token itself is part of the response
and carries loss, as in verl), plus the padding and concatenation helpers that build it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """One batch of sampled responses. Rows are ordered prompt-major: the n samples of a prompt
    are consecutive (row = group * n + sample)."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right-padded with pad id
    response_mask: torch.Tensor  # [B, R] 1 for real response tokens (including the EOS)
    truncated: torch.Tensor  # [B] bool: hit max_new_tokens without an EOS
    group: list[int]  # [B] index of the prompt within the batch
    sample: list[int]  # [B] index of the sample within its group
    # [B, R] tokens that carry loss; None means response_mask. Agent rollouts set it to 0 on
    # tool-result tokens, which the model must attend to (response_mask) but not be trained on.
    loss_mask: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    @property
    def train_mask(self) -> torch.Tensor:
        """The loss mask: `loss_mask` when set, else `response_mask`."""
        return self.response_mask if self.loss_mask is None else self.loss_mask

    def select(self, rows: Sequence[int]) -> Rollout:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return Rollout(
            prompt_ids=self.prompt_ids[idx],
            prompt_mask=self.prompt_mask[idx],
            response_ids=self.response_ids[idx],
            response_mask=self.response_mask[idx],
            truncated=self.truncated[idx],
            group=[self.group[i] for i in rows],
            sample=[self.sample[i] for i in rows],
            loss_mask=None if self.loss_mask is None else self.loss_mask[idx],
        )


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(rows: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    width = max(int(r.shape[0]) for r in rows) if rows else 0
    out = torch.full((len(rows), max(width, 1)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def cut_at_eos(tokens: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Response mask (1 up to and including the first EOS) and the truncated flag per row."""
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    # positions strictly after the first EOS: the cumulative count of EOS *before* them is > 0
    seen_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    mask = (seen_before == 0).long()
    truncated = ~is_eos.any(dim=-1)
    return mask, truncated


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts of different widths (prompts stay left-padded, responses right-padded);
    group indices of later parts are shifted so groups stay distinct."""
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
