"""The math reward: find the final answer, then decide equivalence with math-verify.

Why it is split in two: finding the answer and the common verdicts (the same string after light
normalisation, or two different integers) are cheap string work done in the caller. Only what
remains goes to math-verify/sympy, which can take seconds or hang on adversarial output, so it
runs in worker processes with a hard per-grade timeout (`_pool`). math-verify's own
`signal.alarm` timeouts are switched off (`parsing_timeout=None, timeout_seconds=None`): they fail
off the main thread, which upstream turned into "every reward is 0".

The answer: in the text after `</think>` when the response has one (Archer2.0 grades there, so a
tentative box inside the thinking does not count), the last `\\boxed{}`/`\\fbox{}`, else the last
DAPO `Answer: X` line, else math-verify's own extraction from the tail. Boxes written one after the
other (`\\boxed{2} and \\boxed{3}`) also count as one answer set when the ground truth has several
values, as math-verify itself reads them. An escaped dollar (`\\$16{,}386.20`) is a currency sign,
not a math delimiter. A ground truth (or answer) that math-verify parses only in part
(`1 - \\frac{1}{\\mathrm{x}}` read as `1`) is rejected rather than compared as the part it read.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

from archer.core.rewards import Score
from archer.core.rewards.text import final_text

MAX_ANSWER_CHARS = 1_000  # a longer "answer" is not an answer, and sympy would choke on it
ANSWER_SCAN_CHARS = 20_000  # the `Answer:` line is looked for in the end of the response only
FALLBACK_CHARS = 1_000  # what math-verify's own extraction reads when no answer was marked
MAX_SET_GAP = 40  # boxes at most this many characters apart (no blank line) form one answer set
MAX_SET_BOXES = 16

WORKER_PRELOAD = ("math_verify", "archer.core.rewards.math")
_GRADE = "archer.core.rewards.math:grade_in_worker"

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_LINE = re.compile(r"answer\s*:[ \t]*([^\n]*)", re.IGNORECASE)
_INT = re.compile(r"[+-]?[0-9]+")
_SPACING = re.compile(r"\\[,;:! ]|\\left(?![A-Za-z])|\\right(?![A-Za-z])|\s+|~")
# Rewrites that never change an answer's value and that math-verify gets wrong without them:
# `\$` is a currency sign (math-verify takes it for a delimiter), `{,}` a thousands separator,
# `\mathrm{e}` / `\operatorname{e}` Euler's number (math-verify stops parsing at them).
_CLEAN = (
    (re.compile(r"\\\$"), ""),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\(?:mathrm|operatorname)\{\s*e\s*\}"), "e"),
)
# A parse that stops at an operator did not read the whole expression.
_OPERATOR_END = re.compile(r"(?:[-+*/^_=<>]|\\(?:cdot|times|div|pm|mp))\s*$")
_OPERATOR_START = re.compile(r"\s*(?:[-+*/^_=<>]|\\(?:d?frac|tfrac|cdot|times|div|sqrt|pm|mp)(?![A-Za-z]))")

# Grades that timed out, with the timeout they had: a policy that keeps emitting the same
# pathological expression costs one timeout, not one per step (each costs a worker restart too).
_TIMED_OUT: OrderedDict[tuple[str, str, bool], float] = OrderedDict()
_TIMED_OUT_MAX = 4096
_TIMED_OUT_LOCK = threading.Lock()


@dataclass
class Extraction:
    """The response's final answer, where it came from ("boxed", "answer" or None) and why not.

    `answer_set`: the contents of the boxes written one after the other at the end (oldest first,
    the last box included) when there are at least two of them."""

    answer: str | None
    source: str | None
    error: str | None = None
    answer_set: tuple[str, ...] = field(default_factory=tuple)


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


def _box_at(text: str, j: int) -> tuple[str | None, str | None, int]:
    """The box whose command ends at `j`: (content, error, end index)."""
    k = j
    while k < len(text) and text[k] in " \t\r\n":
        k += 1
    if k < len(text) and text[k] == "{":
        content, error = _braced(text, k)
        if content is None:
            return None, error, len(text)
        end = k + len(content) + 2
    elif k > j:  # "\boxed 5": the token up to the next space or "$"
        content = re.match(r"[^\s$]*", text[k : k + MAX_ANSWER_CHARS + 1]).group(0)
        if len(content) > MAX_ANSWER_CHARS:
            return None, f"\\boxed answer longer than {MAX_ANSWER_CHARS} characters", len(text)
        end = k + len(content)
    else:
        content, end = "", j
    content = content.strip()
    if not content:
        return None, "empty \\boxed{}", end
    return content, None, end


def _box_starts(text: str, before: int) -> list[int]:
    """Start indices of the `\\boxed`/`\\fbox` commands before `before`, the last one last
    (searched backwards, so a huge response with one box at its end costs one scan)."""
    starts: list[int] = []
    pos = before
    while len(starts) < MAX_SET_BOXES:
        start = max(text.rfind("\\boxed", 0, pos), text.rfind("\\fbox", 0, pos))
        if start < 0:
            break
        if _BOX.match(text, start) is not None:
            starts.append(start)
        pos = start
    return starts[::-1]


def _last_box(text: str) -> Extraction | None:
    starts = _box_starts(text, len(text))
    if not starts:
        return None
    boxes = []
    for start in starts:
        content, error, end = _box_at(text, _BOX.match(text, start).end())
        boxes.append((start, end, content, error))
    last_start, _, answer, error = boxes[-1]
    if answer is None:
        return Extraction(None, "boxed", error)
    answer_set = [answer]
    following = last_start
    for start, end, content, _ in reversed(boxes[:-1]):
        gap = text[end:following]
        if content is None or end > following or len(gap) > MAX_SET_GAP or "\n\n" in gap:
            break
        answer_set.insert(0, content)
        following = start
    return Extraction(answer, "boxed", answer_set=tuple(answer_set) if len(answer_set) > 1 else ())


def _strip_answer_value(value: str) -> str:
    value = value.strip().strip("*").strip()  # "**Answer:** 42" leaves "** 42"
    if value.startswith("\\(") and value.endswith("\\)"):
        value = value[2:-2]
    if len(value) >= 2 and value[0] == "$" and value[-1] == "$" and value[-2] != "\\":
        value = value.strip("$")
    return value.strip().rstrip(".").strip()


def extract_answer(text: str) -> Extraction:
    """In the text after `</think>` (the whole text without one): the last `\\boxed{}`/`\\fbox{}`
    (also `\\boxed 5`), else the last `Answer: X` line, else none.

    A malformed last box (unbalanced, empty) is the answer the model gave, so it is not skipped
    for an earlier one: the response is wrong, with the reason in `error`.
    """
    text = final_text(text)
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


def clean_latex(text: str) -> str:
    """The value-preserving rewrites of `_CLEAN` (currency `\\$`, `{,}`, `\\mathrm{e}`)."""
    for pattern, repl in _CLEAN:
        text = pattern.sub(repl, text)
    return text


def normalize(answer: str) -> str:
    """A conservative canonical form: only rewrites that never change the value."""
    s = clean_latex(answer.strip())
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


def _several_values(ground_truth: str) -> bool:
    """Whether a ground truth lists several values (a set, tuple or list of answers)."""
    return "," in normalize(ground_truth)


# -- the worker side (runs inside grading processes) ---------------------------------------------
def _unbalanced(text: str) -> bool:
    depth = 0
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return depth != 0


def partial_parse(source: str, parsed: list) -> bool:
    """Whether math-verify read only part of `source`: the text it matched stops inside a brace
    group or at an operator, or is the start of `source` followed by more arithmetic
    (`1 - \\frac{1}{\\mathrm{x}}` read as `1`). Dropped units (`5\\text{ cm}` read as 5) are fine."""
    matched = next((x for x in reversed(parsed) if isinstance(x, str)), None)
    if not matched:
        return False
    if _unbalanced(matched) or _OPERATOR_END.search(matched):
        return True
    src, got = re.sub(r"\s+", "", source), re.sub(r"\s+", "", matched)
    if got and len(got) < len(src) and src.startswith(got):
        return _OPERATOR_START.match(src[len(got) :]) is not None
    return False


def _mv_parse(text: str, wrap: bool) -> list:
    from math_verify import parse
    from sympy import Basic, MatrixBase

    def parsed(s: str) -> list:
        return parse(s, parsing_timeout=None)

    text = clean_latex(text)
    if not wrap:
        return parsed(text)
    inner = text[1:-1] if len(text) >= 2 and text[0] == "$" and text[-1] == "$" else text
    if "$" in inner:
        out = parsed(text)
        return [] if partial_parse(inner, out) else out
    out: list = []
    for candidate in (f"${inner}$", f"\\boxed{{{inner}}}"):
        out = parsed(candidate)
        if partial_parse(inner, out):
            out = []
        elif any(isinstance(x, (Basic, MatrixBase)) for x in out):
            return out
    bare = parsed(inner)
    if bare and not partial_parse(inner, bare):
        return bare
    return out


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
def _candidates(ex: Extraction, ground_truth: str) -> list[str]:
    """What may be the answer: the last box (or Answer: line), then the trailing answer set."""
    out = [ex.answer] if ex.answer is not None else []
    if ex.answer_set and _several_values(ground_truth):
        out.append(", ".join(ex.answer_set))
    return out


def score_math_batch(
    responses: list[str], ground_truths: list[str], *, timeout_s: float = 5.0, max_workers: int | None = None
) -> list[Score]:
    """Grade many responses: string verdicts first, math-verify (deduplicated) for the rest.

    A response is right when any of its candidates (`_candidates`) is; the score shows the one
    that was, else the last box. The first candidate's error (a timeout) is the response's."""
    scores: list[Score | None] = [None] * len(responses)
    # per response: (shown answer, error) of the first candidate, and the keys still to grade
    pending: dict[int, list[tuple[str, str, bool]]] = {}
    first: dict[int, str | None] = {}
    jobs: dict[tuple[str, str, bool], list[int]] = {}
    for i, (response, gt) in enumerate(zip(responses, ground_truths)):
        gt = str(gt)
        ex = extract_answer(response)
        if ex.answer is None and ex.error is not None:  # a malformed final answer is wrong
            scores[i] = Score(0.0, False, None, ex.error)
            continue
        keys: list[tuple[str, str, bool]] = []
        cands = _candidates(ex, gt)
        for cand in cands:
            verdict = quick_verdict(cand, gt)
            if verdict:
                scores[i] = Score(1.0, True, cand)
                break
            if verdict is None:
                keys.append((cand, gt, True))
        if scores[i] is not None:
            continue
        if not cands:
            keys = [(final_text(response)[-FALLBACK_CHARS:], gt, False)]
        first[i] = ex.answer
        if not keys:  # decided by string work alone: wrong
            scores[i] = Score(0.0, False, ex.answer)
            continue
        pending[i] = keys
        for key in keys:
            jobs.setdefault(key, []).append(i)
    slow: dict[tuple[str, str, bool], str] = {}
    for key in list(jobs):
        with _TIMED_OUT_LOCK:
            if _TIMED_OUT.get(key, -1.0) >= timeout_s:
                slow[key] = "timeout"
                del jobs[key]
    results: dict[tuple[str, str, bool], tuple[bool, str | None, str | None]] = {
        key: (False, key[0] if key[2] else None, error) for key, error in slow.items()
    }
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
            if outcome.status == "ok":
                correct, shown = outcome.value
                results[key] = (bool(correct), shown, None)
            else:
                results[key] = (False, key[0] if key[2] else None, outcome.error or outcome.status)
            if outcome.status == "timeout":
                with _TIMED_OUT_LOCK:
                    _TIMED_OUT[key] = max(timeout_s, _TIMED_OUT.pop(key, 0.0))
                    while len(_TIMED_OUT) > _TIMED_OUT_MAX:
                        _TIMED_OUT.popitem(last=False)
    for i, keys in pending.items():
        right = next((results[k] for k in keys if results[k][0]), None)
        if right is not None:
            scores[i] = Score(1.0, True, right[1])
            continue
        head = results[keys[0]]
        own = first[i] is None or keys[0][0] == first[i]  # the error of the answer itself, not of the set
        scores[i] = Score(0.0, False, head[1] if first[i] is None else first[i], head[2] if own else None)
    return scores  # type: ignore[return-value]


def score_math(response: str, ground_truth: str, *, timeout_s: float = 5.0) -> Score:
    """Grade one response (see `score_math_batch`)."""
    return score_math_batch([response], [ground_truth], timeout_s=timeout_s)[0]
