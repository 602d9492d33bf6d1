"""The reward of worked arithmetic chains (`data.synth.task: chain`): the final result must be exact.

A response is the worked solution `12-3+8=9+8=17`; its answer is what follows the last `=` on
the first line (a bare `17` counts too). The steps are not graded: they are how the model gets
there, and a wrong step shows up in the final number anyway.
"""

from __future__ import annotations

from archer.core.rewards import Score
from archer.core.rewards.arithmetic import score_integer_answer


def score_chain(response: str, ground_truth: str) -> Score:
    """1.0 when the integer after the last `=` of the first line equals the ground truth."""
    cut = response.find("\n")
    line = response[:cut] if cut >= 0 else response
    return score_integer_answer(line[line.rfind("=") + 1 :].strip(), ground_truth)
