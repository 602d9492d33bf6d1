"""archer's graders as verl's custom reward function.

verl's reward loop loads `reward.custom_reward_function.path=pkg://archer.core.rewards.verl_reward`,
`name=compute_score`, and calls it once per response from an executor thread of a Ray worker,
with `reward.custom_reward_function.reward_kwargs` (`function`, `by_source`, `timeout_s`,
`format_reward`, set by `archer train`) merged in. The function for a row is chosen from its
`data_source` by the same rule as the local engine's (`resolve_reward_function`). Grading goes
through `score_batch`, whose timeouts are processes it can kill (math) or sandboxed subprocesses
(code) — never `signal.alarm`, which fails off the main thread and which upstream turned into
"every reward is 0".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archer.core.rewards import REWARD_FUNCTIONS, resolve_reward_function, score_batch


def _truth(function: str, ground_truth: Any) -> Any:
    """Code keeps its tests as given; f1 keeps a list of accepted answers; the rest grade a string."""
    if function == "code":
        return ground_truth
    if function == "f1" and not isinstance(ground_truth, (str, bytes)) and hasattr(ground_truth, "__iter__"):
        return [str(g) for g in ground_truth]
    return str(ground_truth)


def compute_score(
    data_source: Any = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Any = None,
    *,
    function: str = "math",
    by_source: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    format_reward: float = 0.0,
    agent_answer: bool = False,
    **_verl_kwargs: Any,
) -> dict[str, Any]:
    """verl's reward signature -> {"score", "acc", "pred"} (verl keeps the extra keys per response
    as `reward_extra_info`; archer's trace reads `acc` for its `correct` column). `agent_answer`
    (agent.enable): the answer is the text after the last tool result, as the local engine grades."""
    if agent_answer:
        from archer.core.agent.protocol import final_answer

        solution_str = final_answer(solution_str)
    source = None if data_source is None else str(data_source)
    name = resolve_reward_function(function, dict(by_source or {}), source)
    if name not in REWARD_FUNCTIONS:
        raise ValueError(f"unknown reward function {name!r}; known: {', '.join(REWARD_FUNCTIONS)}")
    score = score_batch(name, [solution_str], [_truth(name, ground_truth)], timeout_s=float(timeout_s))[0]
    reward = float(score.reward)
    if format_reward and score.extracted is not None:
        reward += float(format_reward)
    return {"score": reward, "acc": bool(score.correct), "pred": score.extracted or ""}
