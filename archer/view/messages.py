"""Messages the viewer's workers and tabs post (dataclasses, as harlequin does).

Workers never touch widgets: they read, compute and post one of these; the app's handlers
update the screen. Every result carries the step/row it is for, so a late answer for a step the
user has already left is recognised and dropped. Tabs ask the app for a new selection with the
requests at the end (StepChosen, ResponseChosen, JumpTo, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class TraceOpened(Message):
    data: Any  # TraceData
    steps: list  # list[StepRow]


@dataclass
class StepsRefreshed(Message):
    steps: list  # list[StepRow]


@dataclass
class TraceFailed(Message):
    message: str
    hint: str | None = None


@dataclass
class DecoderReady(Message):
    decoder: Any  # Decoder


@dataclass
class StepLoaded(Message):
    step: int
    table: Any  # ResponseTable


@dataclass
class StepFailed(Message):
    step: int
    message: str


@dataclass
class ResponseLoaded(Message):
    step: int
    row: int
    tokens: Any  # ResponseTokens
    texts: list  # raw decoded text per token (ids as text in ids mode)
    prompt: str
    decoder: Any


@dataclass
class ResponseFailed(Message):
    step: int
    row: int
    message: str


@dataclass
class StatsLoaded(Message):
    step: int
    stats: Any  # StepStats
    texts: dict  # (row, pos) -> (text before, token text, text after), for the top-K table


@dataclass
class StatsFailed(Message):
    step: int
    message: str


@dataclass
class GroupLoaded(Message):
    step: int
    uid: str
    rows: list  # response rows of the group
    prompt: str
    previews: dict  # row -> decoded response preview
    tokens: dict | None = None  # row -> (token texts, influence or None, length): the first tokens


@dataclass
class AcrossProgress(Message):
    done: int
    total: int


@dataclass
class AcrossLoaded(Message):
    emap: Any  # EntropyMap


@dataclass
class PromptHistoryLoaded(Message):
    prompt: str  # decoded, for the heading
    history: list  # PromptStep, in step order


@dataclass
class ExportDone(Message):
    path: Any  # Path
    count: int
    what: str


@dataclass
class WorkFailed(Message):
    what: str
    message: str


# ---- requests from the tabs to the app ------------------------------------------------------


@dataclass
class StepChosen(Message):
    """The user moved to `step` in the step list."""

    step: int


@dataclass
class ResponseChosen(Message):
    """The user moved to `row` in the response table (`open`: and asked to see its tokens)."""

    row: int
    open: bool = False


@dataclass
class TokenKeepChanged(Message):
    """The entropy/influence filter changed: `keep` marks the tokens inside (None = all)."""

    keep: Any  # np.ndarray | None


@dataclass
class StatsWanted(Message):
    """A tab needs the current step's statistics (top-K, scale percentiles)."""


@dataclass
class StepSearchWanted(Message):
    """Find `query` in every response of the current step (the top-K tab's search)."""

    query: str


@dataclass
class StepSearchDone(Message):
    step: int
    query: str
    hits: list  # TokenHit, kind "match"
    total: int  # matches in all (hits stops at a limit)
    texts: dict  # (row, pos) -> (text before, match text, text after)


@dataclass
class JumpTo(Message):
    """Show `row` of `step` in the tokens tab, cursor on `pos` (from top-K, group, palette)."""

    step: int
    row: int | None = None
    pos: int | None = None


@dataclass
class JumpToUid(Message):
    uid: str


@dataclass
class CursorMoved(Message):
    pos: int
