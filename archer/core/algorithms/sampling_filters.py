"""DAPO's sampling-side pieces: the soft overlong penalty and dynamic sampling (group filtering).

Dynamic sampling drops groups whose responses all scored the same: under any group-baseline
estimator their advantages are all 0, so they cost compute and dilute the batch without moving
the policy. The engine generates rounds until `GroupAccumulator` holds enough informative groups:

    acc = GroupAccumulator()
    while acc.should_continue(target_groups, max_num_gen_batches):
        groups, uids, accs = generate_one_round()
        acc.add(groups, uids, accs)
    batch = acc.take(target_groups) if acc.full(target_groups) else acc.take(len(acc))
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from archer.errors import ConfigError
from archer.influence.groups import (
    group_values,
    has_contrast,
    informative_groups,  # noqa: F401  (re-exported)
)


def overlong_penalty(
    response_lengths: torch.Tensor,
    *,
    max_response_length: int,
    buffer_len: int,
    penalty_factor: float,
) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to each response's reward: [B] -> [B], values <= 0.

    min(-(L - (L_max - L_buf)) / L_buf * factor, 0): zero up to L_max - L_buf tokens, then falling
    linearly to -factor at L_max (verl's DAPO reward manager, same asserts on the buffer).
    """
    if buffer_len <= 0:
        raise ConfigError(
            f"algorithm.overlong_buffer.len must be positive, got {buffer_len}",
            hint="disable the penalty with algorithm.overlong_buffer.enable=false instead",
        )
    if buffer_len > max_response_length:
        raise ConfigError(
            f"algorithm.overlong_buffer.len ({buffer_len}) exceeds the response limit "
            f"({max_response_length})",
            hint="lower algorithm.overlong_buffer.len or raise rollout.max_new_tokens",
        )
    lengths = torch.as_tensor(response_lengths).to(torch.float32)
    expected = max_response_length - buffer_len
    penalty = -(lengths - expected) / buffer_len * penalty_factor
    return torch.clamp(penalty, max=0.0)


class GroupAccumulator:
    """Collects the informative groups of successive generation rounds for one training step.

    `add(groups, group_ids, values)`: `group_ids` and `values` are per sample (e.g. the uid and
    accuracy of each response), `groups` holds one payload per group, in the order in which the
    groups first appear in `group_ids` (the natural order of a batch whose prompts are repeated
    n times). Informative payloads are kept in arrival order; `take` hands out whole groups.
    """

    def __init__(self) -> None:
        self._kept: list[Any] = []
        self.rounds = 0
        self.kept_groups = 0
        self.dropped_groups = 0
        self.surplus_groups = 0

    def __len__(self) -> int:
        return len(self._kept)

    def add(self, groups: list[Any], group_ids: Sequence[Hashable], values: Sequence[float]) -> int:
        """Record one generation round; returns how many of its groups were kept."""
        grouped = group_values(group_ids, values)
        if len(groups) != len(grouped):
            raise ValueError(
                f"{len(groups)} group payloads for {len(grouped)} distinct group ids; "
                "pass one payload per group, in order of first appearance"
            )
        informative = {gid for gid, vals in grouped.items() if has_contrast(vals)}
        kept = [payload for payload, gid in zip(groups, grouped) if gid in informative]
        self._kept.extend(kept)
        self.rounds += 1
        self.kept_groups += len(kept)
        self.dropped_groups += len(groups) - len(kept)
        return len(kept)

    def full(self, target_groups: int) -> bool:
        """Whether at least `target_groups` informative groups are held."""
        return len(self._kept) >= target_groups

    def should_continue(self, target_groups: int, max_rounds: int) -> bool:
        """Generate another round? Not while full, nor once `max_rounds` rounds ran (0 = no cap)."""
        if self.full(target_groups):
            return False
        return max_rounds <= 0 or self.rounds < max_rounds

    def take(self, target_groups: int) -> list[Any]:
        """Exactly `target_groups` groups (the earliest kept); the surplus is discarded.

        Leftovers are not carried to the next step: they were sampled from this step's policy and
        would be off-policy later (verl's DAPO trainer discards them the same way).
        """
        if target_groups < 0 or target_groups > len(self._kept):
            raise ValueError(
                f"asked for {target_groups} groups but only {len(self._kept)} informative groups "
                "were collected"
            )
        taken = self._kept[:target_groups]
        self.surplus_groups += len(self._kept) - target_groups
        self._kept = []
        return taken

    def stats(self) -> dict[str, float]:
        """Counters for logging."""
        return {
            "rounds": float(self.rounds),
            "kept_groups": float(self.kept_groups),
            "dropped_groups": float(self.dropped_groups),
            "surplus_groups": float(self.surplus_groups),
        }
