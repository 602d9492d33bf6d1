"""Reward functions by name: each grades one response against a ground truth and returns a `Score`.

The engines call `score_batch` once per step with every response of the step, so the registry
also owns the batch path: cheap string checks in the caller, expensive grading (math-verify) in
worker processes with a timeout that works from any thread (see `_pool`), programs (`code`) in
archer's sandbox, one process per unit test.

Which function grades a row can depend on the row's `data_source` (`reward.by_source`, as verl's
`default_compute_score` and Archer2.0's `general_reward_fn` dispatch): `resolve_reward_function`
is the one rule, used by `score_batch` and by verl's entry point (`verl_reward.compute_score`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from archer.errors import UsageError


@dataclass
class Score:
    """One graded response: `reward` feeds the advantage, the rest explains it."""

    reward: float
    correct: bool
    extracted: str | None
    error: str | None = None


@dataclass(frozen=True)
class RewardSpec:
    """A registered reward function.

    `grade` and `batch` are "module:function" paths, imported on first use (math-verify and the
    sandbox stay unimported until a run needs them). `whole_response`: the function reads the
    whole response (format checks, tool tags), so agent rollouts hand it the full text rather
    than the final answer after the last tool result.
    """

    name: str
    grade: str
    batch: str | None
    whole_response: bool
    doc: str


REWARDS: dict[str, RewardSpec] = {
    spec.name: spec
    for spec in (
        RewardSpec(
            "arithmetic",
            "archer.core.rewards.arithmetic:score_arithmetic",
            None,
            False,
            "the first line must be exactly the integer (the synthetic tasks)",
        ),
        RewardSpec(
            "chain",
            "archer.core.rewards.chain:score_chain",
            None,
            False,
            "worked chains (`12-3+8=9+8=17`): the integer after the last `=` of the first line",
        ),
        RewardSpec(
            "math",
            "archer.core.rewards.math:score_math",
            "archer.core.rewards.math:score_math_batch",
            False,
            "final answer (after </think>; last \\boxed{} or Answer: line) equal to the ground "
            "truth by string or math-verify; 1/0",
        ),
        RewardSpec(
            "code",
            "archer.core.rewards.code:score_code",
            "archer.core.rewards.code:score_code_batch",
            False,
            "the last fenced code block passes every unit test in the sandbox; 1/0",
        ),
        RewardSpec(
            "f1",
            "archer.core.rewards.f1:score_f1",
            None,
            True,
            "ARPO's deep-research reward: -1 unless <think>…</think> and one <answer>…\\boxed{}…"
            "</answer> with ordered tool tags; else token F1 of the boxed answer (+0.1 with both tools)",
        ),
    )
}
REWARD_FUNCTIONS: tuple[str, ...] = tuple(REWARDS)


def _check_name(name: str, where: str = "reward.function") -> RewardSpec:
    spec = REWARDS.get(name)
    if spec is None:
        at = "" if where == "reward.function" else f" ({where})"
        raise UsageError(
            f"unknown reward function {name!r}{at}; known: {', '.join(REWARD_FUNCTIONS)}",
            hint=f"set {where} to one of: " + ", ".join(REWARD_FUNCTIONS),
        )
    return spec


def _load(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    return getattr(import_module(module), attr)


def resolve_reward_function(
    default: str, by_source: Mapping[str, str] | None = None, data_source: str | None = None
) -> str:
    """The reward function for one row: `by_source[data_source]` when that key is there, else the
    first key that matches as a glob pattern (`aime*`, in the mapping's order), else `default`."""
    if by_source and data_source is not None:
        source = str(data_source)
        if source in by_source:
            return str(by_source[source])
        for pattern, name in by_source.items():
            if fnmatch.fnmatchcase(source, str(pattern)):
                return str(name)
    return default


def check_by_source(by_source: Mapping[str, str] | None) -> None:
    """Every function named in a `reward.by_source` mapping must exist (UsageError otherwise)."""
    for pattern, name in (by_source or {}).items():
        _check_name(str(name), where=f"reward.by_source.{pattern}")


def get_reward_fn(name: str) -> Callable[[str, Any], Score]:
    """`fn(response, ground_truth) -> Score` for a reward function name."""
    return _load(_check_name(name).grade)


def reads_whole_response(name: str) -> bool:
    """Whether `name` grades the whole response rather than the final answer (see RewardSpec)."""
    return _check_name(name).whole_response


def score_batch(
    name: str,
    responses: Sequence[str],
    ground_truths: Sequence[Any],
    *,
    timeout_s: float = 5.0,
    max_workers: int | None = None,
    data_sources: Sequence[str | None] | None = None,
    by_source: Mapping[str, str] | None = None,
    answers: Sequence[str] | None = None,
) -> list[Score]:
    """Grade `responses[i]` against `ground_truths[i]`; safe to call from any thread.

    `timeout_s` bounds each expensive grade (math) or each unit-test run (code); `max_workers`
    caps the grading processes this call uses (default: the CPU count, at most 8).
    `data_sources` with `by_source` pick the function per row (`resolve_reward_function`; `name`
    is the default). `answers` (agent rollouts: the text after the last tool result) is what the
    final-answer functions grade; functions that read the whole response get `responses`.
    """
    _check_name(name)
    check_by_source(by_source)
    n = len(responses)
    if len(ground_truths) != n:
        raise ValueError(f"{n} responses but {len(ground_truths)} ground truths")
    for label, other in (("data sources", data_sources), ("answers", answers)):
        if other is not None and len(other) != n:
            raise ValueError(f"{n} responses but {len(other)} {label}")
    names = [
        resolve_reward_function(name, by_source, None if data_sources is None else data_sources[i])
        for i in range(n)
    ]
    out: list[Score | None] = [None] * n
    for fn_name in dict.fromkeys(names):
        spec = REWARDS[fn_name]
        rows = [i for i in range(n) if names[i] == fn_name]
        texts = [responses[i] if spec.whole_response or answers is None else answers[i] for i in rows]
        truths = [ground_truths[i] for i in rows]
        if spec.batch is not None:
            scores = _load(spec.batch)(texts, truths, timeout_s=timeout_s, max_workers=max_workers)
        else:
            grade = _load(spec.grade)
            scores = [grade(t, g) for t, g in zip(texts, truths)]
        for i, s in zip(rows, scores):
            out[i] = s
    return out  # type: ignore[return-value]


__all__ = [
    "REWARDS",
    "REWARD_FUNCTIONS",
    "RewardSpec",
    "Score",
    "check_by_source",
    "get_reward_fn",
    "reads_whole_response",
    "resolve_reward_function",
    "score_batch",
]
