"""The math reward: find the final answer, then decide equivalence with math-verify.

Why it is split in two: finding the answer (last `\\boxed{}`, else the DAPO `Answer: X` line) and
the common verdicts (the same string after light normalisation, or two different integers) are
cheap string work done in the caller. Only what remains goes to math-verify/sympy, which can take
seconds or hang on adversarial output, so it runs in worker processes with a hard per-grade
timeout (`_pool`). math-verify's own `signal.alarm` timeouts are switched off
(`parsing_timeout=None, timeout_seconds=None`): they fail off the main thread, which upstream
turned into "every reward is 0".
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

from archer.core.rewards import Score

MAX_ANSWER_CHARS = 1_000  # a longer "answer" is not an answer, and sympy would choke on it
ANSWER_SCAN_CHARS = 20_000  # the `Answer:` line is looked for in the end of the response only
FALLBACK_CHARS = 1_000  # what math-verify's own extraction reads when no answer was marked

WORKER_PRELOAD = ("math_verify", "archer.core.rewards.math")
_GRADE = "archer.core.rewards.math:grade_in_worker"

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_LINE = re.compile(r"answer\s*:[ \t]*([^\n]*)", re.IGNORECASE)
_INT = re.compile(r"[+-]?[0-9]+")
_SPACING = re.compile(r"\\[,;:! ]|\\left(?![A-Za-z])|\\right(?![A-Za-z])|\s+|~")

# Grades that timed out, with the timeout they had: a policy that keeps emitting the same
# pathological expression costs one timeout, not one per step (each costs a worker restart too).
_TIMED_OUT: OrderedDict[tuple[str, str, bool], float] = OrderedDict()
_TIMED_OUT_MAX = 4096
_TIMED_OUT_LOCK = threading.Lock()


@dataclass
class Extraction:
    """The response's final answer, where it came from ("boxed", "answer" or None) and why not."""

    answer: str | None
    source: str | None
    error: str | None = None


def _braced(text: str, start: int) -> tuple[str | None, str | None]:
    """The content of the `{...}` group opening at `start`, honouring nesting and `\\{`."""
    depth = 0
    i = start
    stop = min(len(text), start + MAX_ANSWER_CHARS + 2)
    while i < stop:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], None
        i += 1
    if stop < len(text):
        return None, f"\\boxed{{}} longer than {MAX_ANSWER_CHARS} characters"
    return None, "unbalanced \\boxed{"


def _last_box(text: str) -> Extraction | None:
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        m = _BOX.match(text, start)
        if m is not None:
            break
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    else:
        return None
    j = m.end()
    k = j
    while k < len(text) and text[k] in " \t\r\n":
        k += 1
    if k < len(text) and text[k] == "{":
        content, error = _braced(text, k)
        if content is None:
            return Extraction(None, "boxed", error)
    elif k > j:  # "\boxed 5": the token up to the next space or "$"
        content = re.match(r"[^\s$]*", text[k : k + MAX_ANSWER_CHARS + 1]).group(0)
        if len(content) > MAX_ANSWER_CHARS:
            return Extraction(None, "boxed", f"\\boxed answer longer than {MAX_ANSWER_CHARS} characters")
    else:
        content = ""
    content = content.strip()
    if not content:
        return Extraction(None, "boxed", "empty \\boxed{}")
    return Extraction(content, "boxed")


def _strip_answer_value(value: str) -> str:
    value = value.strip().strip("*").strip()  # "**Answer:** 42" leaves "** 42"
    if value.startswith("\\(") and value.endswith("\\)"):
        value = value[2:-2]
    if len(value) >= 2 and value[0] == "$" and value[-1] == "$":
        value = value.strip("$")
    return value.strip().rstrip(".").strip()


def extract_answer(text: str) -> Extraction:
    """The last `\\boxed{}`/`\\fbox{}` (also `\\boxed 5`), else the last `Answer: X` line, else none.

    A malformed last box (unbalanced, empty) is the answer the model gave, so it is not skipped
    for an earlier one: the response is wrong, with the reason in `error`.
    """
    box = _last_box(text)
    if box is not None:
        return box
    last = None
    for match in _ANSWER_LINE.finditer(text, max(0, len(text) - ANSWER_SCAN_CHARS)):
        last = match  # the last line that has it
    if last is None:
        return Extraction(None, None)
    value = _strip_answer_value(last.group(1))
    if not value:
        return Extraction(None, "answer", "empty Answer:")
    if len(value) > MAX_ANSWER_CHARS:
        return Extraction(None, "answer", f"Answer: longer than {MAX_ANSWER_CHARS} characters")
    return Extraction(value, "answer")


def normalize(answer: str) -> str:
    """A conservative canonical form: only rewrites that never change the value."""
    s = answer.strip()
    if s.startswith("\\boxed{") and s.endswith("}"):
        s = s[7:-1]
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SPACING.sub("", s)
    return s.rstrip(".")


def quick_verdict(answer: str, ground_truth: str) -> bool | None:
    """True/False when string work alone decides; None when math-verify must."""
    a, g = normalize(answer), normalize(ground_truth)
    if a and a == g:
        return True
    if _INT.fullmatch(a) and _INT.fullmatch(g) and len(a) < 4000 and len(g) < 4000:
        return int(a) == int(g)
    return None


# -- the worker side (runs inside grading processes) ---------------------------------------------
def _mv_parse(text: str, wrap: bool) -> list:
    from math_verify import parse
    from sympy import Basic, MatrixBase

    def parsed(s: str) -> list:
        return parse(s, parsing_timeout=None)

    if not wrap:
        return parsed(text)
    inner = text[1:-1] if len(text) >= 2 and text[0] == "$" and text[-1] == "$" else text
    if "$" in inner:
        return parsed(text)
    for candidate in (f"${inner}$", f"\\boxed{{{inner}}}"):
        out = parsed(candidate)
        if any(isinstance(x, (Basic, MatrixBase)) for x in out):
            return out
    return parsed(inner) or out


@lru_cache(maxsize=4096)
def _gold(ground_truth: str) -> list:
    return _mv_parse(ground_truth, wrap=True)


@lru_cache(maxsize=16384)
def grade_in_worker(pred: str, ground_truth: str, extracted: bool) -> tuple[bool, str | None]:
    """(correct, extracted text) by math-verify; `pred` is an extracted answer or a response tail."""
    import logging

    from math_verify import verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # the "timeout disabled" notice
    target = _mv_parse(pred, wrap=extracted)
    if not target:
        return False, pred if extracted else None
    shown = pred if extracted else str(target[-1])
    gold = _gold(ground_truth)
    if not gold:
        return False, shown
    return bool(verify(gold, target, timeout_seconds=None)), shown


# -- the caller side --------------------------------------------------------------------------------
def score_math_batch(
    responses: list[str], ground_truths: list[str], *, timeout_s: float = 5.0, max_workers: int | None = None
) -> list[Score]:
    """Grade many responses: string verdicts first, math-verify (deduplicated) for the rest."""
    scores: list[Score | None] = [None] * len(responses)
    jobs: dict[tuple[str, str, bool], list[tuple[int, str | None]]] = {}
    for i, (response, gt) in enumerate(zip(responses, ground_truths)):
        gt = str(gt)
        ex = extract_answer(response)
        if ex.answer is not None:
            verdict = quick_verdict(ex.answer, gt)
            if verdict is not None:
                scores[i] = Score(1.0 if verdict else 0.0, verdict, ex.answer)
                continue
            key = (ex.answer, gt, True)
        elif ex.error is not None:  # a malformed final answer is wrong; do not guess another
            scores[i] = Score(0.0, False, None, ex.error)
            continue
        else:
            key = (response[-FALLBACK_CHARS:], gt, False)
        with _TIMED_OUT_LOCK:
            known_slow = _TIMED_OUT.get(key, -1.0) >= timeout_s
        if known_slow:
            scores[i] = Score(0.0, False, ex.answer, "timeout")
            continue
        jobs.setdefault(key, []).append((i, ex.answer))
    if jobs:
        from archer.core.rewards._pool import WorkerStartError, get_pool
        from archer.errors import ArcherError

        keys = list(jobs)
        try:
            outcomes = get_pool(WORKER_PRELOAD).map(
                _GRADE, keys, timeout_s=timeout_s, max_workers=max_workers
            )
        except WorkerStartError as e:
            raise ArcherError(
                f"the math grader could not start: {e}",
                hint="check that math-verify is installed ('archer env'), or pip install math-verify",
            ) from e
        for key, outcome in zip(keys, outcomes):
            for i, answer in jobs[key]:
                if outcome.status == "ok":
                    correct, shown = outcome.value
                    scores[i] = Score(1.0 if correct else 0.0, bool(correct), shown)
                else:
                    scores[i] = Score(0.0, False, answer, outcome.error or outcome.status)
            if outcome.status == "timeout":
                with _TIMED_OUT_LOCK:
                    _TIMED_OUT[key] = max(timeout_s, _TIMED_OUT.pop(key, 0.0))
                    while len(_TIMED_OUT) > _TIMED_OUT_MAX:
                        _TIMED_OUT.popitem(last=False)
    return scores  # type: ignore[return-value]


def score_math(response: str, ground_truth: str, *, timeout_s: float = 5.0) -> Score:
    """Grade one response (see `score_math_batch`)."""
    return score_math_batch([response], [ground_truth], timeout_s=timeout_s)[0]
