"""archer's graders as verl's custom reward function.

verl's reward loop loads `reward.custom_reward_function.path=pkg://archer.core.rewards.verl_reward`,
`name=compute_score`, and calls it once per response from an executor thread of a Ray worker,
with `reward.custom_reward_function.reward_kwargs` (`function`, `timeout_s`, `format_reward`, set by
`archer train`) merged in. Grading goes through `score_batch`, whose timeouts are processes it can
kill (math) or sandboxed subprocesses (code) — never `signal.alarm`, which fails off the main
thread and which upstream turned into "every reward is 0".
"""

from __future__ import annotations

from typing import Any

from archer.core.rewards import REWARD_FUNCTIONS, score_batch


def compute_score(
    data_source: Any = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Any = None,
    *,
    function: str = "math",
    timeout_s: float = 10.0,
    format_reward: float = 0.0,
    **_verl_kwargs: Any,
) -> dict[str, Any]:
    """verl's reward signature -> {"score", "acc", "pred"} (verl keeps the extra keys per response
    as `reward_extra_info`; archer's trace reads `acc` for its `correct` column)."""
    if function not in REWARD_FUNCTIONS:
        raise ValueError(f"unknown reward function {function!r}; known: {', '.join(REWARD_FUNCTIONS)}")
    truth = ground_truth if function == "code" else str(ground_truth)
    score = score_batch(function, [solution_str], [truth], timeout_s=float(timeout_s))[0]
    reward = float(score.reward)
    if format_reward and score.extracted is not None:
        reward += float(format_reward)
    return {"score": reward, "acc": bool(score.correct), "pred": score.extracted or ""}
