"""The text protocol between the model and its tools.

The model writes `<python>code</python>` or `<search>query</search>` and generation stops at the
closing tag; the engine runs the tool and appends `<result>output</result>` (those tokens are the
tool's, not the model's: no loss); the model continues until EOS. Its answer is what follows the
last `</result>` (the whole response when it called no tool), graded by the configured reward.
"""

from __future__ import annotations

from archer.core.trace.schema import ROLE_MODEL, ROLE_NAMES, ROLE_TOOL_CALL, ROLE_TOOL_RESULT  # noqa: F401

TOOL_TAGS = {"python": ("<python>", "</python>"), "search": ("<search>", "</search>")}
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"


def detect_call(segment: str, tools: tuple[str, ...]) -> tuple[str, str, int] | None:
    """(tool, content, start char of the opening tag) when `segment` ends with a closing tag of one
    of `tools` and holds its opening tag; None otherwise (a stray closing tag is plain text)."""
    for name in tools:
        open_tag, close_tag = TOOL_TAGS[name]
        if segment.endswith(close_tag):
            start = segment.rfind(open_tag, 0, len(segment) - len(close_tag))
            if start < 0:
                return None
            return name, segment[start + len(open_tag) : len(segment) - len(close_tag)], start
    return None


def format_result(text: str) -> str:
    return f"{RESULT_OPEN}{text}{RESULT_CLOSE}"


def final_answer(response: str) -> str:
    """The text after the last tool result (the model's answer)."""
    cut = response.rfind(RESULT_CLOSE)
    return (response[cut + len(RESULT_CLOSE) :] if cut >= 0 else response).lstrip()


def demonstration(tool: str, content: str, result: str, answer: str) -> tuple[str, list[tuple[str, int]]]:
    """A tool-use demonstration as text plus (piece, role) spans, for the supervised warm-up."""
    open_tag, close_tag = TOOL_TAGS[tool]
    spans = [
        (f"{open_tag}{content}{close_tag}", ROLE_TOOL_CALL),
        (format_result(result), ROLE_TOOL_RESULT),
        (answer, ROLE_MODEL),
    ]
    return "".join(s for s, _ in spans), spans
