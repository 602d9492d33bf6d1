"""archer's advantage estimators behind verl's estimator signature.

verl's generic path calls `fn(token_level_rewards=, response_mask=, config=AlgoConfig, index=uids)`;
archer's take `norm_adv_by_std_in_grpo` and `epsilon` as keywords. They are registered as
`archer_<name>` so verl's own `grpo`/`rloo` stay untouched (the two differ on singleton groups:
docs/algorithms.md), and `algorithm.adv_estimator=grpo` in an archer preset selects `archer_grpo`.
"""

from __future__ import annotations

from typing import Any

from archer.core.algorithms import available_adv_estimators, get_adv_estimator

PREFIX = "archer_"


def verl_name(name: str) -> str:
    return PREFIX + name


def verl_estimator(name: str) -> Any:
    archer_fn = get_adv_estimator(name)

    def estimator(token_level_rewards, response_mask, index=None, config=None, **_ignored):
        if index is None:
            raise ValueError(f"advantage estimator {verl_name(name)!r} needs the prompt uid of each response")
        norm = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
        return archer_fn(
            token_level_rewards, response_mask, index, norm_adv_by_std_in_grpo=norm, epsilon=1e-6
        )

    estimator.__name__ = f"{verl_name(name)}_advantage"
    estimator._archer_name = verl_name(name)
    return estimator


def all_estimators() -> dict[str, Any]:
    return {verl_name(n): verl_estimator(n) for n in available_adv_estimators()}
