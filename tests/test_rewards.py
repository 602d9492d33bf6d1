"""Reward functions: what counts as correct, and grading that works from any thread with a real timeout."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from archer.core.rewards import REWARD_FUNCTIONS, Score, get_reward_fn, score_batch
from archer.core.rewards._pool import WorkerPool, WorkerStartError
from archer.core.rewards.math import extract_answer, quick_verdict
from archer.errors import UsageError

ANY = object()  # the extracted text is not checked for this case

# (function, response, ground truth, correct, extracted, error substring or None)
CASES = [
    # -- arithmetic: the first line must be exactly the integer --------------------------------------
    ("arithmetic", "68", "68", True, "68", None),
    ("arithmetic", "68\n12+3=15", "68", True, "68", None),
    ("arithmetic", "  68  \nmore", "68", True, "68", None),
    ("arithmetic", "+7", "7", True, "+7", None),
    ("arithmetic", "07", "7", True, "07", None),
    ("arithmetic", "-12", "-12", True, "-12", None),
    ("arithmetic", "-0", "0", True, "-0", None),
    ("arithmetic", "7.0", "7", False, "7.0", None),
    ("arithmetic", "7 apples", "7", False, "7 apples", None),
    ("arithmetic", "", "7", False, None, None),
    ("arithmetic", "\n7", "7", False, None, None),
    ("arithmetic", "69", "68", False, "69", None),
    ("arithmetic", "6 8", "68", False, "6 8", None),
    ("arithmetic", "--7", "-7", False, "--7", None),
    ("arithmetic", "\u0667", "7", False, "\u0667", None),  # Arabic-Indic seven is not an ASCII digit
    ("arithmetic", "68=68", "68", False, "68=68", None),
    ("arithmetic", "5", "five", False, "5", "not an integer"),
    ("arithmetic", "1" * 500_000, "1", False, ANY, None),  # huge: no int() blow-up, no crash
    # -- chain: the number after the last '=' of the first line ---------------------------------------
    ("chain", "12-3+8=9+8=17", "17", True, "17", None),
    ("chain", "17", "17", True, "17", None),
    ("chain", "12-3+8=9+8=16", "17", False, "16", None),
    ("chain", "12-3+8=9+8=17\n=5", "17", True, "17", None),
    ("chain", "12-3+8=9+8=", "17", False, None, None),
    ("chain", "12-3+8=9+8", "17", False, "9+8", None),  # no final result: not an integer
    ("chain", "2-3+8=-1+8=7", "7", True, "7", None),  # the steps are not graded
    ("chain", "9=-1", "-1", True, "-1", None),
    ("chain", "9=1 7", "17", False, "1 7", None),
    ("chain", "9=17", "x", False, "17", "not an integer"),
    # -- math: equivalent forms ----------------------------------------------------------------------
    ("math", "So \\boxed{\\frac{1}{2}}.", "0.5", True, "\\frac{1}{2}", None),
    ("math", "\\boxed{0.5}", "\\frac{1}{2}", True, "0.5", None),
    ("math", "\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True, "2\\sqrt{2}", None),
    ("math", "The answer is \\boxed{ 42 }.", "42", True, "42", None),
    ("math", "\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True, "\\dfrac{3}{4}", None),
    ("math", "\\boxed{\\dfrac{3}{4}}", "0.75", True, "\\dfrac{3}{4}", None),
    ("math", "\\boxed{50\\%}", "50", True, "50\\%", None),
    ("math", "\\boxed{[1,2)}", "[1, 2)", True, "[1,2)", None),
    ("math", "\\boxed{(1,2)}", "[1,2)", False, "(1,2)", None),
    ("math", "\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", True, "\\{1,2,3\\}", None),
    ("math", "\\boxed{(-\\infty, 3]}", "(-\\infty,3]", True, "(-\\infty, 3]", None),
    ("math", "\\boxed{\\left( 1, 2 \\right)}", "(1,2)", True, ANY, None),
    ("math", "\\boxed{x = 5}", "5", True, "x = 5", None),
    ("math", "\\boxed{1,000}", "1000", True, "1,000", None),
    ("math", "\\boxed{\\pi/2}", "\\frac{\\pi}{2}", True, "\\pi/2", None),
    ("math", "\\boxed{007}", "7", True, "007", None),
    ("math", "\\fbox{12}", "12", True, "12", None),
    ("math", "so it is $\\boxed 5$.", "5", True, "5", None),
    ("math", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", True, "\\frac{\\sqrt{3}}{2}", None),
    ("math", "$\\boxed{10^\\circ}$", "10", True, "10^\\circ", None),
    ("math", "\\boxed{5}", "\\boxed{5}", True, "5", None),
    # -- math: wrong answers ------------------------------------------------------------------------
    ("math", "\\boxed{3}", "4", False, "3", None),
    ("math", "\\boxed{\\frac{1}{3}}", "0.5", False, "\\frac{1}{3}", None),
    ("math", "\\boxed{2\\sqrt{3}}", "\\sqrt{8}", False, "2\\sqrt{3}", None),
    # -- math: malformed or missing answers ---------------------------------------------------------
    ("math", "\\boxed{\\frac{1}{2}", "0.5", False, None, "unbalanced"),
    ("math", "\\boxed{}", "0", False, None, "empty"),
    ("math", "\\boxed{   }", "0", False, None, "empty"),
    ("math", "I do not know.", "7", False, None, None),
    ("math", "", "7", False, None, None),
    # -- math: several answers, the last one counts ---------------------------------------------------
    ("math", "first \\boxed{3}, then \\boxed{4}", "4", True, "4", None),
    ("math", "first \\boxed{3}, then \\boxed{4}", "3", False, "4", None),
    ("math", "\\boxed{3} and finally \\boxed{4", "3", False, None, "unbalanced"),
    ("math", "\\boxed{5}\nAnswer: 6", "5", True, "5", None),
    # -- math: DAPO's Answer: form ---------------------------------------------------------------------
    ("math", "Let me think.\nAnswer: 17", "17", True, "17", None),
    ("math", "Answer: 16\nno, wait\nAnswer: 17", "17", True, "17", None),
    ("math", "**Answer:** $\\frac{1}{2}$", "0.5", True, "\\frac{1}{2}", None),
    ("math", "answer: 17.", "17", True, "17", None),
    ("math", "so the\nAnswer:", "17", False, None, "empty Answer"),
    # -- math: no marked answer, math-verify's own extraction ----------------------------------------
    ("math", "so x = 7", "7", True, "7", None),
    ("math", "The final answer is 42", "42", True, "42", None),
    # -- math: huge outputs are bounded ----------------------------------------------------------------
    ("math", "lorem ipsum " * 50_000 + "\\boxed{42}", "42", True, "42", None),
    ("math", "\\boxed{" + "1" * 300_000 + "}", "1", False, None, "longer than"),
    ("math", "x" * 500_000, "7", False, None, None),
    ("math", "(" * 200_000, "1", False, None, None),
    ("math", "{" * 100_000 + "\\boxed{3}", "3", True, "3", None),
    # -- math: an escaped dollar is a currency sign, not a math delimiter -----------------------------
    ("math", "The total is \\boxed{\\$16{,}386.20}.", "16386.20", True, "\\$16{,}386.20", None),
    ("math", "\\boxed{16386.2}", "\\$16{,}386.20", True, "16386.2", None),
    ("math", "\\boxed{\\$5}", "5", True, "\\$5", None),
    ("math", "Answer: \\$1{,}000", "1000", True, "\\$1{,}000", None),
    ("math", "\\boxed{\\$16{,}386.20}", "16386.02", False, "\\$16{,}386.20", None),
    # -- math: boxes written one after the other are the answer set when the truth has several values --
    ("math", "The solutions are $\\boxed{2}$ and $\\boxed{3}$.", "2, 3", True, "2, 3", None),
    ("math", "The solutions are $\\boxed{2}$ and $\\boxed{3}$.", "\\{2, 3\\}", True, "2, 3", None),
    ("math", "x = \\boxed{-1} or x = \\boxed{4}", "4, -1", True, "-1, 4", None),
    ("math", "The solutions are $\\boxed{2}$ and $\\boxed{3}$.", "3", True, "3", None),
    ("math", "The solutions are $\\boxed{2}$ and $\\boxed{3}$.", "2", False, "3", None),
    ("math", "\\boxed{2}, \\boxed{5}", "2, 3", False, "5", None),
    ("math", "first \\boxed{2}\n\nthen, after checking, \\boxed{3}", "2, 3", False, "3", None),
    # -- math: a truth (or answer) that math-verify reads only in part is not compared as that part ----
    ("math", "\\boxed{1}", "1 - \\frac{1}{\\mathrm{e}}", False, "1", None),
    ("math", "\\boxed{1 - \\frac{1}{e}}", "1 - \\frac{1}{\\mathrm{e}}", True, "1 - \\frac{1}{e}", None),
    ("math", "\\boxed{1 - e^{-1}}", "1 - \\frac{1}{\\mathrm{e}}", True, "1 - e^{-1}", None),
    ("math", "\\boxed{3}", "3 + \\frac{1}{\\mathrm{ab}}", False, "3", None),
    ("math", "\\boxed{1}", "1 - \\mathrm{x}^{-1}", False, "1", None),
    ("math", "\\boxed{3 + \\frac{1}{\\mathrm{ab}}}", "3", False, ANY, None),
    ("math", "\\boxed{5\\text{ cm}}", "5", True, "5\\text{ cm}", None),  # dropped units are fine
    # -- math: Archer2.0's edge cases: the answer is what follows </think> ----------------------------
    ("math", "<think>maybe \\boxed{3}?</think>The answer is 5.", "5", True, "5", None),
    ("math", "<think>maybe \\boxed{3}?</think>The answer is 5.", "3", False, "5", None),
    ("math", "<think>maybe \\boxed{3}</think>So \\boxed{5}.", "5", True, "5", None),
    ("math", "<think>maybe \\boxed{3}</think>So \\boxed{5}.", "3", False, "5", None),
    ("math", "<think>a</think>\nAnswer: 12", "12", True, "12", None),
    ("math", "<think>\\boxed{5}</think>", "5", False, None, None),  # nothing after the thinking
    ("math", "<think>cut off by the length limit at \\boxed{5}", "5", True, "5", None),  # no </think>
]


def _check(score: Score, correct: bool, extracted, error) -> None:
    assert score.correct is correct
    assert score.reward == (1.0 if correct else 0.0)
    if extracted is not ANY:
        assert score.extracted == extracted
    if error is None:
        assert score.error is None
    else:
        assert score.error is not None and error in score.error


def _case_id(case) -> str:
    name, response, gt = case[:3]
    short = response if len(response) < 40 else f"{response[:20]}...({len(response)} chars)"
    return f"{name}:{short!r}~{gt[:20]!r}"


@pytest.mark.parametrize("name,response,gt,correct,extracted,error", CASES, ids=[_case_id(c) for c in CASES])
def test_grading_table(name, response, gt, correct, extracted, error):
    _check(get_reward_fn(name)(response, gt), correct, extracted, error)


@pytest.mark.parametrize("name", REWARD_FUNCTIONS)
def test_score_batch_matches_single_grades(name):
    cases = [c for c in CASES if c[0] == name]
    scores = score_batch(name, [c[1] for c in cases], [c[2] for c in cases])
    assert len(scores) == len(cases)
    for score, (_, _, _, correct, extracted, error) in zip(scores, cases):
        _check(score, correct, extracted, error)


# ARPO/AEPO's deep_research.compute_score (RUC-NLPIR/ARPO a95cd08,
# ARPO/verl_arpo_entropy/verl/utils/reward_score/deep_research.py): -1 on a bad format, else token F1.
THINK = "<think>reasoning</think>"
SEARCH = "<search>capital of France</search><result>Paris is the capital.</result>"
PYTHON = "<python>print(6*7)</python><result>42</result>"
# (response, ground truth, reward, correct, extracted, error substring or None)
F1_CASES = [
    (f"{THINK}<answer>\\boxed{{Paris}}</answer>", "Paris", 1.0, True, "Paris", None),
    (f"{THINK}<answer>It is \\boxed{{the Eiffel Tower}}.</answer>", "Eiffel Tower", 1.0, True, ANY, None),
    (f"{THINK}<answer>\\boxed{{Vienna Austria}}</answer>", "Vienna, Austria", 1.0, True, ANY, None),
    (f"{THINK}<answer>\\boxed{{Vienna}}</answer>", "Vienna, Austria", 2 / 3, False, "Vienna", None),
    (f"{THINK}<answer>\\boxed{{New York}}</answer>", ["NYC", "New York City"], 0.8, False, ANY, None),
    (f"{THINK}<answer>\\boxed{{New York City}}</answer>", ["NYC", "New York City"], 1.0, True, ANY, None),
    (f"{THINK}<answer>\\boxed{{yes}}</answer>", "no", 0.0, False, "yes", None),
    (f"{THINK}<answer>\\boxed{{no}}</answer>", "no", 1.0, True, "no", None),
    (f"{THINK}<answer>\\boxed{{Lyon}}</answer>", "Paris", 0.0, False, "Lyon", None),
    (f"{THINK}<answer>\\boxed{{}}</answer>", "Paris", 0.0, False, "", None),  # empty box: F1 0, not -1
    (f"{THINK}<answer>\\boxed{{12}}</answer>", "12", 1.0, True, "12", None),
    (f"{THINK}<answer>\\boxed{{\\frac{{1}}{{2}}}}</answer>", "0.5", 0.0, False, ANY, None),  # strings only
    (f"{THINK}<answer>\\boxed{{1}} or rather \\boxed{{2}}</answer>", "2", 1.0, True, "2", None),
    # both tools used and F1 > 0: +0.1
    (
        f"{THINK}{SEARCH}<think>now compute</think>{PYTHON}<answer>\\boxed{{Paris}}</answer>",
        "Paris",
        1.1,
        True,
        ANY,
        None,
    ),
    (
        f"{THINK}{SEARCH}<think>now compute</think>{PYTHON}<answer>\\boxed{{Lyon}}</answer>",
        "Paris",
        0.0,
        False,
        ANY,
        None,
    ),
    (f"{THINK}{SEARCH}<answer>\\boxed{{Paris}}</answer>", "Paris", 1.0, True, ANY, None),
    # bad format: -1
    ("<answer>\\boxed{Paris}</answer>", "Paris", -1.0, False, None, "<think> or </think> not found"),
    (f"<think>{THINK}<answer>\\boxed{{Paris}}</answer>", "Paris", -1.0, False, None, "not paired"),
    (f"{THINK}Paris", "Paris", -1.0, False, None, "<answer> or </answer> not found"),
    (
        f"{THINK}<answer>\\boxed{{a}}</answer><answer>\\boxed{{b}}</answer>",
        "b",
        -1.0,
        False,
        None,
        "<answer>",
    ),
    (f"{THINK}<answer>Paris</answer>", "Paris", -1.0, False, None, "missing \\boxed{}"),
    (f"{THINK}</answer>\\boxed{{Paris}}<answer>", "Paris", -1.0, False, None, "must be before"),
    (
        f"{THINK}<search>q</search><answer>\\boxed{{Paris}}</answer>",
        "Paris",
        -1.0,
        False,
        None,
        "search/result",
    ),
    (
        f"{THINK}<python>1<result>1</result></python><answer>\\boxed{{1}}</answer>",
        "1",
        -1.0,
        False,
        None,
        "wrong order",
    ),
    (f"{THINK}<answer>\\boxed{{a}} then \\boxed{{Paris</answer>", "Paris", -1.0, False, None, "not closed"),
]


@pytest.mark.parametrize("response,gt,reward,correct,extracted,error", F1_CASES)
def test_f1_reward_table(response, gt, reward, correct, extracted, error):
    score = get_reward_fn("f1")(response, gt)
    assert score.reward == pytest.approx(reward) and score.correct is correct
    if extracted is not ANY:
        assert score.extracted == extracted
    assert (score.error is None) if error is None else (error in score.error)


def test_f1_reward_on_a_full_arpo_style_response():
    """A response in the shape ARPO's own example has (tools, results, a boxed answer inside prose)."""
    response = (
        "<think> Let me compute it and double-check with a search. </think>"
        "<python>\nimport math\nprint(math.comb(4, 2) * 2)\n</python><result>\n12\n</result>"
        "<search> number of ways to choose 2 of 4 times 2 </search><result> 12 </result>"
        "<answer>The value of \\( n \\) is \\(\\boxed{12}\\). Both checks agree.</answer>"
    )
    assert score_batch("f1", [response], ["12"]) == [Score(pytest.approx(1.1), True, "12")]


def test_reward_is_chosen_by_data_source_the_same_way_on_both_engines():
    """`reward.by_source` picks the function per row (exact name, then glob patterns, else the
    default); verl's entry point and the local engine's score_batch give the same scores."""
    from archer.core.rewards import resolve_reward_function
    from archer.core.rewards.verl_reward import compute_score

    by_source = {"hotpotqa": "f1", "aime*": "math", "code*": "code"}
    assert resolve_reward_function("math", by_source, "hotpotqa") == "f1"
    assert resolve_reward_function("f1", by_source, "aime2025") == "math"
    assert resolve_reward_function("f1", by_source, "musique") == "f1"
    assert resolve_reward_function("math", by_source, None) == "math"
    assert resolve_reward_function("math", {"a*": "f1", "ab*": "code"}, "abc") == "f1"  # first match wins
    rows = [
        ("hotpotqa", f"{THINK}<answer>\\boxed{{Paris}}</answer>", "Paris", 1.0),
        ("hotpotqa", "The answer is \\boxed{Paris}", "Paris", -1.0),  # f1: no <think>/<answer>
        ("aime2025", f"{THINK}<answer>\\boxed{{\\frac{{1}}{{2}}}}</answer>", "0.5", 1.0),  # math
        ("musique", f"{THINK}<answer>\\boxed{{two words}}</answer>", "two", 2 / 3),  # the default: f1
    ]
    sources, responses, truths, expected = (list(x) for x in zip(*rows))
    local = score_batch("f1", responses, truths, data_sources=sources, by_source=by_source)
    assert [s.reward for s in local] == pytest.approx(expected)
    verl = [
        compute_score(src, resp, truth, {}, function="f1", by_source=by_source)
        for src, resp, truth in zip(sources, responses, truths)
    ]
    assert [v["score"] for v in verl] == pytest.approx(expected)
    assert [v["acc"] for v in verl] == [s.correct for s in local]
    with pytest.raises(UsageError, match="reward.by_source.aime"):
        score_batch("math", ["x"], ["y"], data_sources=["aime"], by_source={"aime": "poetry"})
    with pytest.raises(ValueError, match="unknown reward function"):
        compute_score("aime", "x", "y", function="math", by_source={"aime": "poetry"})


def test_agent_answers_go_to_final_answer_functions_and_whole_responses_to_f1():
    """Agent mode passes the text after the last tool result as `answers`: math grades it, f1 (which
    checks the tool tags) grades the whole response."""
    from archer.core.rewards import reads_whole_response

    whole = f"{THINK}{PYTHON}<answer>\\boxed{{42}}</answer>"
    answer = "<answer>\\boxed{42}</answer>"
    assert reads_whole_response("f1") and not reads_whole_response("math")
    [math] = score_batch("math", [whole], ["42"], answers=["\\boxed{41}"])
    assert math.correct is False and math.extracted == "41"
    [f1] = score_batch("f1", [whole], ["42"], answers=[answer])
    assert f1.correct is True and f1.reward == 1.0
    with pytest.raises(ValueError, match="1 responses but 2 answers"):
        score_batch("math", [whole], ["42"], answers=["a", "b"])


def test_score_batch_handles_repeats_and_empty_batches():
    # a GRPO group: the same answers many times (graded once, reported for each)
    responses = ["\\boxed{0.5}", "\\boxed{1/3}", "Answer: 1/2"] * 20
    scores = score_batch("math", responses, ["\\frac{1}{2}"] * len(responses))
    assert [s.correct for s in scores] == [True, False, True] * 20
    assert score_batch("math", [], []) == []
    assert score_batch("arithmetic", [], []) == []


def test_unknown_reward_function_is_a_usage_error():
    with pytest.raises(UsageError) as e:
        get_reward_fn("chess")
    assert all(name in e.value.message for name in ("arithmetic", "math", "code", "f1"))
    assert e.value.exit_code == 2 and e.value.hint
    with pytest.raises(UsageError):
        score_batch("chess", ["x"], ["y"])


def test_score_batch_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 responses but 1 ground truths"):
        score_batch("arithmetic", ["1", "2"], ["1"])


def test_extraction_details():
    assert extract_answer("\\boxed{\\text{a}\\{b\\}}").answer == "\\text{a}\\{b\\}"
    assert extract_answer("\\boxedfoo{1} \\boxed{2}").answer == "2"
    assert extract_answer("\\boxed{2} \\boxedfoo{1}").answer == "2"  # not the command \boxed
    assert extract_answer("no marker here").source is None
    assert extract_answer("Answer: \\(x+1\\)").answer == "x+1"


# Responses whose verdict needs math-verify (no string shortcut), with the right answer.
MV_CASES = [
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("Answer: \\frac{3}{4}", "0.75", True),
    ("so x = 7", "7", True),
    ("\\boxed{\\frac{1}{3}}", "0.5", False),
    ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", True),
]


def _mv_batch() -> list[Score]:
    return score_batch("math", [c[0] for c in MV_CASES], [c[1] for c in MV_CASES])


def test_math_verify_cases_really_reach_math_verify():
    for response, gt, _ in MV_CASES:
        answer = extract_answer(response).answer
        assert answer is None or quick_verdict(answer, gt) is None


def test_grading_from_threads_matches_the_main_thread():
    expected = [c[2] for c in MV_CASES]
    main = _mv_batch()
    assert [s.correct for s in main] == expected and sum(s.reward for s in main) == 5.0

    from_thread: list[list[Score]] = []
    t = threading.Thread(target=lambda: from_thread.append(_mv_batch()))
    t.start()
    t.join(timeout=120)
    assert from_thread == [main]

    with ThreadPoolExecutor(max_workers=4) as pool:
        batches = list(pool.map(lambda _: _mv_batch(), range(4)))
        singles = list(pool.map(lambda c: get_reward_fn("math")(c[0], c[1]), MV_CASES))
    assert all(b == main for b in batches)
    assert singles == main


def _grade_in_child(queue) -> None:
    queue.put([(s.correct, s.error) for s in _mv_batch()])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_grading_in_a_forked_child_uses_its_own_workers():
    import multiprocessing

    main = _mv_batch()  # the parent's workers exist before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_grade_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert got == [(s.correct, s.error) for s in main]
    assert _mv_batch() == main  # the parent's pool is untouched


def test_pathological_expression_times_out_without_hanging():
    score_batch("math", ["\\boxed{1/2}"], ["0.5"])  # start the graders first: not part of the timing
    slow = "\\boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate the tower: minutes, not seconds
    results: list[list[Score]] = []
    start = time.monotonic()
    t = threading.Thread(
        target=lambda: results.append(
            score_batch("math", [slow, "\\boxed{0.5}"], ["5", "1/2"], timeout_s=1.0)
        )
    )
    t.start()
    t.join(timeout=60)
    elapsed = time.monotonic() - start
    assert not t.is_alive()
    [slow_score, ok_score] = results[0]
    assert slow_score == Score(0.0, False, "9^{9^{9^{9}}}", "timeout")
    assert ok_score.correct  # the other grade in the batch is unaffected
    assert elapsed < 1.0 + 20.0  # timeout plus generous slack for a loaded machine
    # the killed grader was replaced: grading still works, and the slow answer is remembered as slow
    again = score_batch("math", [slow, "\\boxed{0.25}"], ["5", "\\frac{1}{4}"], timeout_s=1.0)
    assert again[0].error == "timeout" and again[1].correct


def test_pool_times_out_kills_and_reports_worker_errors():
    pool = WorkerPool(())
    try:
        out = pool.map("time:sleep", [(30,), (0,)], timeout_s=0.5, max_workers=2)
        assert [o.status for o in out] == ["timeout", "ok"]
        out = pool.map("math:sqrt", [(4.0,), (-1.0,)], timeout_s=10)
        assert out[0].status == "ok" and out[0].value == 2.0
        assert out[1].status == "error" and "ValueError" in out[1].error
        out = pool.map("os:_exit", [(3,)], timeout_s=10, max_workers=1)
        assert out[0].status == "error" and "exit code 3" in out[0].error
        assert pool.map("math:floor", [(2.5,)], timeout_s=10)[0].value == 2  # replaced after the crash
    finally:
        pool.close()
    assert pool.size == 0


def test_pool_that_cannot_start_raises():
    pool = WorkerPool(("archer_no_such_module",))
    try:
        with pytest.raises(WorkerStartError, match="archer_no_such_module"):
            pool.map("math:sqrt", [(1.0,)], timeout_s=10)
    finally:
        pool.close()
