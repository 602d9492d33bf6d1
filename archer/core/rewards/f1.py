"""The format-gated token-F1 reward of ARPO/AEPO's search and reasoning runs (`reward.function: f1`).

The rule of `deep_research.compute_score` in RUC-NLPIR/ARPO (a95cd08,
`ARPO/verl_arpo_entropy/verl/utils/reward_score/deep_research.py`; AEPO ships the same file), which
every ARPO and AEPO training script uses for all of its data, math rows included:

  -1  when the format is wrong: `<think>`/`</think>` missing or unpaired; not exactly one
      `<answer>` and one `</answer>`; a `<search>`/`<python>` call not followed, in order, by its
      closing tag and a `<result>…</result>`; no `\\boxed{` inside the answer; or the last box of
      the answer has no closing brace;
  F1  otherwise, the token F1 of the last `\\boxed{}` inside `<answer>` against the ground truth
      (SQuAD normalisation: lower case, no punctuation, no articles; "yes"/"no"/"noanswer" must
      match exactly; a list of ground truths takes the best), plus 0.1 when F1 > 0 and the
      response used both tools.

For a one-word answer (most math answers) F1 is exact match after normalisation. `Score.correct`
(the `acc` of verl, archer's accuracy metrics) is exact match after the same normalisation.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from typing import Any

from archer.core.rewards import Score

BAD_FORMAT_REWARD = -1.0
BOTH_TOOLS_BONUS = 0.1  # deep_research.py: F1 > 0 and both </search> and </python> in the response
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_EXACT_ONLY = ("yes", "no", "noanswer")


def format_error(text: str) -> str | None:
    """Why `text` fails ARPO's format check, or None when it passes."""
    if text.count("<think>") != text.count("</think>"):
        return "<think> </think> not paired"
    if text.count("<think>") == 0:
        return "<think> or </think> not found"
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return "<answer> or </answer> not found"
    for tool in ("search", "python"):
        error = _tool_order_error(text, tool)
        if error:
            return error
    start, end = text.find("<answer>"), text.find("</answer>")
    if start > end:
        return "<answer> must be before </answer>"
    inside = text[start:end]
    if "\\boxed{" not in inside or "}" not in inside:
        return "answer is missing \\boxed{} format"
    return None


def _tool_order_error(text: str, tool: str) -> str | None:
    """Each `<tool>` must be followed by `</tool>`, then `<result>`, then `</result>`."""
    pos = 0
    while True:
        call = text.find(f"<{tool}>", pos)
        if call < 0:
            return None
        result = text.find("<result>", call)
        call_end = text.find(f"</{tool}>", call)
        result_end = text.find("</result>", result) if result >= 0 else -1
        if -1 in (result, call_end, result_end):
            return f"{tool}/result tags are incomplete"
        if not call < call_end < result < result_end:
            return f"{tool}/result tags are nested in the wrong order"
        pos = result_end


def boxed_answer(answer: str) -> str | None:
    """The content of the last `\\boxed{...}` of the answer (braces counted as written), or of a
    trailing `\\boxed x` up to the next `$`; None when the last box is not closed."""
    if "\\boxed " in answer:
        return answer.split("\\boxed ")[-1].split("$")[0]
    start = answer.rfind("\\boxed")
    if start < 0 or not answer.startswith("\\boxed{", start):
        return None
    depth = 0
    for i in range(start, len(answer)):
        if answer[i] == "{":
            depth += 1
        elif answer[i] == "}":
            depth -= 1
            if depth == 0:
                return answer[start + len("\\boxed{") : i]
    return None


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation removed, articles removed, spaces collapsed."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _truths(ground_truth: Any) -> list[str]:
    if isinstance(ground_truth, str):
        return [ground_truth]
    if isinstance(ground_truth, Iterable) and not isinstance(ground_truth, (bytes, dict)):
        return [str(g) for g in ground_truth]
    return [str(ground_truth)]


def token_f1(prediction: str, ground_truth: Any) -> float:
    """The best token F1 of `prediction` against the ground truth(s)."""
    best = 0.0
    pred = normalize_answer(prediction)
    for truth in _truths(ground_truth):
        gold = normalize_answer(truth)
        if (pred in _EXACT_ONLY or gold in _EXACT_ONLY) and pred != gold:
            continue
        pred_tokens, gold_tokens = pred.split(), gold.split()
        same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if same == 0:
            continue
        precision, recall = same / len(pred_tokens), same / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def score_f1(response: str, ground_truth: Any) -> Score:
    """Grade one whole response (see the module docstring)."""
    error = format_error(response)
    if error is not None:
        return Score(BAD_FORMAT_REWARD, False, None, f"bad format: {error}")
    match = _ANSWER.search(response.strip())
    answer = boxed_answer(match.group(1)) if match else None
    if answer is None:
        return Score(BAD_FORMAT_REWARD, False, None, "bad format: the answer's last \\boxed{ is not closed")
    f1 = token_f1(answer, ground_truth)
    reward = f1
    if f1 > 0 and "</search>" in response and "</python>" in response:
        reward = f1 + BOTH_TOOLS_BONUS
    exact = any(normalize_answer(answer) == normalize_answer(t) for t in _truths(ground_truth))
    return Score(reward, exact, answer)
