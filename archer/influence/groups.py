"""Prompt groups and contrast: the one definition of "this group has both kinds of responses".

A group of responses to one prompt is informative only if its per-response values (accuracy,
reward, or the accepted flag) are not all equal: under a group baseline its advantages are then
not all 0 (dynamic sampling keeps it), and it holds both accepted and rejected responses (influence
can contrast them). A group of one is never informative. Used by DAPO's dynamic sampling
(archer.core.algorithms.sampling_filters), influence selection and scoring. Pure Python.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any


def has_contrast(values: Iterable[Any]) -> bool:
    """Whether the values of one group are not all equal (False for zero or one value)."""
    it = iter(values)
    try:
        first = next(it)
    except StopIteration:
        return False
    return any(v != first for v in it)


def group_values(group_ids: Sequence[Hashable], values: Sequence[Any]) -> dict[Hashable, list[Any]]:
    """Values per group id, groups in order of first appearance."""
    ids = group_ids.tolist() if hasattr(group_ids, "tolist") else list(group_ids)
    vals = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(ids) != len(vals):
        raise ValueError(f"{len(ids)} group ids but {len(vals)} values")
    grouped: dict[Hashable, list[Any]] = {}
    for gid, value in zip(ids, vals):
        grouped.setdefault(gid, []).append(value)
    return grouped


def informative_groups(group_ids: Sequence[Hashable], values: Sequence[Any]) -> list[Hashable]:
    """Ids of the groups whose values are not all equal, in order of first appearance."""
    return [gid for gid, vals in group_values(group_ids, values).items() if has_contrast(vals)]
