"""Which responses are accepted, and which prompt groups get influence scores this step.

Pure Python over per-response correctness (or rewards) and group ids, shared by both engines. A group is worth
scoring only if it has both accepted and rejected responses (otherwise there is no contrast);
`max_prompts_per_step` caps how many such groups are traced (0 = all of them).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from archer.influence.groups import group_values, has_contrast


def accepted_mask(
    rewards: Sequence[float], groups: Sequence[Hashable], *, rule: str = "group_max", threshold: float = 0.5
) -> list[bool]:
    """accepted[i]: reward equals its group's maximum (`group_max`), or exceeds `threshold`."""
    if rule == "threshold":
        return [float(r) > threshold for r in rewards]
    if rule != "group_max":
        raise ValueError(f"unknown acceptance rule {rule!r}")
    best: dict[Hashable, float] = {}
    for r, g in zip(rewards, groups):
        best[g] = max(best.get(g, float("-inf")), float(r))
    return [float(r) == best[g] for r, g in zip(rewards, groups)]


def select_groups(
    groups: Sequence[Hashable], accepted: Sequence[bool], *, max_prompts: int = 0
) -> tuple[list[Hashable], int]:
    """(groups to trace in order of first appearance, number of constant groups left out)."""
    seen = group_values(groups, [bool(a) for a in accepted])
    mixed = [g for g, acc in seen.items() if has_contrast(acc)]
    constant = len(seen) - len(mixed)
    if max_prompts > 0:
        mixed = mixed[:max_prompts]
    return mixed, constant


def trace_accepted(groups: Sequence[Hashable], accepted: Sequence[bool]) -> list[bool | None]:
    """The trace's `accepted` column: the flag within groups that have both kinds, None in groups
    whose responses are all accepted or all rejected (they have no contrast)."""
    flags = [bool(a) for a in accepted]
    mixed = {g for g, acc in group_values(groups, flags).items() if has_contrast(acc)}
    return [a if g in mixed else None for g, a in zip(groups, flags)]


def acceptance_values(rewards: Sequence[float], correct: Sequence[bool | None] | None) -> list[float]:
    """What `accept_rule` compares: correctness (1/0) where the reward function reports it for
    every response, else the reward. Never the shaped reward when correctness is known: DAPO's
    overlong penalty would turn a long correct answer into a rejected one, and an all-wrong group
    of mixed lengths into one with contrast."""
    if correct is not None and len(correct) == len(rewards) and all(c is not None for c in correct):
        return [1.0 if c else 0.0 for c in correct]
    return [float(r) for r in rewards]


def plan_step(
    rewards: Sequence[float],
    advantages: Sequence[float],
    groups: Sequence[Hashable],
    settings,
    correct: Sequence[bool | None] | None = None,
) -> tuple:
    """Everything an engine decides before capture: (ResponseMeta of every response in the traced
    groups, accepted flag of every response, number of constant groups left out).

    `advantages` are per-response (sequence-level) values; `settings` is an InfluenceSettings;
    `correct` is the reward function's correctness per response, which labels accepted/rejected
    (acceptance_values). The sign σ still comes from the advantage and the reward."""
    from archer.influence.scoring import ResponseMeta

    output = settings.output
    accepted = accepted_mask(
        acceptance_values(rewards, correct),
        groups,
        rule=settings.accept_rule,
        threshold=settings.accept_threshold,
    )
    chosen, constant = select_groups(groups, accepted, max_prompts=settings.max_prompts_per_step)
    keep = set(chosen)
    metas = [
        ResponseMeta(
            row=i,
            group=g,
            accepted=accepted[i],
            sign=output.sign(float(advantages[i]), float(rewards[i])),
        )
        for i, g in enumerate(groups)
        if g in keep
    ]
    return metas, accepted, constant
