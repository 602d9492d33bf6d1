"""Which responses are accepted, and which prompt groups get influence scores this step.

Pure Python over per-response rewards and group ids, shared by both engines. A group is worth
scoring only if it has both accepted and rejected responses (otherwise there is no contrast);
`max_prompts_per_step` caps how many such groups are traced (0 = all of them).
"""

from __future__ import annotations

from typing import Hashable, Sequence


def accepted_mask(rewards: Sequence[float], groups: Sequence[Hashable], *, rule: str = "group_max",
                  threshold: float = 0.5) -> list[bool]:
    """accepted[i]: reward equals its group's maximum (`group_max`), or exceeds `threshold`."""
    if rule == "threshold":
        return [float(r) > threshold for r in rewards]
    if rule != "group_max":
        raise ValueError(f"unknown acceptance rule {rule!r}")
    best: dict[Hashable, float] = {}
    for r, g in zip(rewards, groups):
        best[g] = max(best.get(g, float("-inf")), float(r))
    return [float(r) == best[g] for r, g in zip(rewards, groups)]


def select_groups(groups: Sequence[Hashable], accepted: Sequence[bool], *, max_prompts: int = 0
                  ) -> tuple[list[Hashable], int]:
    """(groups to trace in order of first appearance, number of constant groups left out)."""
    seen: dict[Hashable, list[bool]] = {}
    for g, a in zip(groups, accepted):
        seen.setdefault(g, []).append(bool(a))
    mixed = [g for g, acc in seen.items() if any(acc) and not all(acc)]
    constant = len(seen) - len(mixed)
    if max_prompts > 0:
        mixed = mixed[:max_prompts]
    return mixed, constant
