"""One prompt's ARPO/AEPO tool rollouts against a generation server (verl's agent loop).

The local engine decodes every trajectory of a step in one batched KV cache (`rollout.py`). A
server rollout (verl's agent loop, with vLLM or archer's hf replica) instead sends one request per
turn: the context so far in, tokens out. `GroupRollout` runs one prompt's group that way, as
asyncio tasks, one per trajectory:

- `initial_rollouts` roots start at once; each asks the server for tokens, keeps them up to the
  first closing tool tag (`protocol.detect_call`: the same tags as the local engine; a server
  that honours `stop` strings ends there itself, the cut is then a no-op), calls the tool, appends
  `<result>…</result>` (role tool result, log-prob 0, no loss) and asks again;
- after each tool result a trajectory takes its branching decision with the shared rule
  (`branching.fork_budget`, `branch_decision`, `entropy_delta`, `segment_entropy`): a branch is a
  copy of the trajectory so far (tokens, roles, calls), continued by its own task;
- the group never exceeds `n` and is always filled: when no trajectory is live and the budget is
  not used up, fresh rollouts start (`refill` one | all), as in the local engine.

The server reports, per generated token, the top-k truncated entropy the rule needs
(`Generation.topk_entropy`: exact from archer's hf replica, from top-k log-probs elsewhere).
The group's session ids are 0..n-1 in allocation order, so verl stores every branch as its own
trajectory. AEPO's lock-step counter (`consecutive_count=iteration`) and dynamic rollouts need
the whole batch in step and are not run here (`check_group_settings`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from archer.core.agent.branching import (
    BranchSettings,
    ConsecutiveCounter,
    branch_decision,
    entropy_delta,
    fork_budget,
    segment_entropy,
)
from archer.core.agent.protocol import (
    ROLE_MODEL,
    ROLE_TOOL_CALL,
    ROLE_TOOL_RESULT,
    detect_call,
    format_result,
)
from archer.core.agent.stats import rollout_stats


@dataclass
class Generation:
    """One server reply: the sampled tokens, their log-probs and their top-k truncated entropies
    (under the sampling temperature; `None` where the server gave none)."""

    token_ids: list[int]
    log_probs: list[float] | None = None
    topk_entropy: list[float] | None = None


@dataclass
class ToolReply:
    text: str
    status: str  # ok | error | timeout | cpu_limit | ...


GenerateFn = Callable[[list[int], int], Awaitable[Generation]]  # (context ids, max new tokens)
ToolFn = Callable[[str, str], Awaitable[ToolReply]]  # (tool, content)


@dataclass
class GroupTrajectory:
    """One trajectory of a group: its response (model and tool tokens), what happened on it."""

    session: int
    origin: str  # initial | branch | fresh
    parent: int | None = None
    forked_at: int = 0
    tokens: list[int] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    finish: str = ""
    base_h: float | None = None
    last_h: float | None = None
    seg_hs: list[float] = field(default_factory=list)
    decisions: list[tuple[float, bool]] = field(default_factory=list)  # the ones this trajectory took

    @property
    def loss_mask(self) -> list[int]:
        return [0 if r == ROLE_TOOL_RESULT else 1 for r in self.roles]

    def summary(self) -> dict[str, Any]:
        """What the trainer reads back per row (verl's extra_fields): metrics and token roles."""
        return {
            "origin": self.origin,
            "parent": -1 if self.parent is None else int(self.parent),
            "calls": [list(c) for c in self.calls],
            "decisions": [[float(d), bool(b)] for d, b in self.decisions],
            "roles": [int(r) for r in self.roles],
            "segment_entropy": [float(h) for h in self.seg_hs],
            "finish": self.finish,
        }


@dataclass
class GroupResult:
    trajectories: list[GroupTrajectory]  # session order
    stats: dict[str, float]


def check_group_settings(b: BranchSettings) -> None:
    """What a per-prompt server rollout cannot honour."""
    if b.lockstep:
        raise ValueError(
            "AEPO's consecutive-branch counter per lock-step iteration needs the whole batch in "
            "step; a server rollout decides per prompt (use agent.aepo.consecutive_count=decision)"
        )
    if b.mode == "aepo" and b.dynamic_rollouts:
        raise ValueError("AEPO's dynamic rollouts run on the local engine only")


class GroupRollout:
    """One prompt's trajectories. `encode(text)` tokenises a tool result; `piece(token)` decodes
    one token (tool tags are found in the decoded text); `vocab_size` normalises entropies."""

    def __init__(
        self,
        branch: BranchSettings,
        *,
        generate: GenerateFn,
        call_tool: ToolFn,
        encode: Callable[[str], list[int]],
        piece: Callable[[int], str],
        eos_ids: Sequence[int],
        tools: Sequence[str],
        vocab_size: int,
        max_response_tokens: int,
        max_turns: int,
        rng: random.Random,
    ):
        check_group_settings(branch)
        self.b = branch
        self.generate = generate
        self.call_tool = call_tool
        self.encode = encode
        self.piece = piece
        self.eos = {int(e) for e in eos_ids}
        self.tools = tuple(tools)
        self.vocab = int(vocab_size)
        self.max_response = int(max_response_tokens)
        self.max_turns = int(max_turns)
        self.rng = rng
        self.counter = ConsecutiveCounter(1, branch.consecutive_count)

    async def run(self, prompt_ids: Sequence[int]) -> GroupResult:
        self.prompt = [int(t) for t in prompt_ids]
        self.all: list[GroupTrajectory] = []
        self.tasks: set[asyncio.Task] = set()
        for _ in range(self.b.initial_rollouts):
            self._start(self._new("initial"))
        try:
            while True:
                while self.tasks:
                    done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        self.tasks.discard(task)
                        task.result()  # a failed trajectory fails the group
                short = self.b.n - len(self.all)
                if short <= 0:
                    break
                for _ in range(short if self.b.refill == "all" else 1):
                    self._start(self._new("fresh"))
        except BaseException:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            raise
        if len(self.all) != self.b.n:  # the invariant the design rests on
            raise RuntimeError(f"a group ended with {len(self.all)} trajectories, budget {self.b.n}")
        decisions = [d for t in self.all for d in t.decisions]
        stats = rollout_stats(
            [t.origin for t in self.all],
            [t.calls for t in self.all],
            decisions,
            1,
            self.b.n,
            [h for t in self.all for h in t.seg_hs],
        )
        return GroupResult(list(self.all), stats)

    def _new(self, origin: str, parent: GroupTrajectory | None = None) -> GroupTrajectory:
        t = GroupTrajectory(session=len(self.all), origin=origin)
        if parent is not None:
            t.parent, t.forked_at = parent.session, len(parent.tokens)
            t.tokens, t.roles = list(parent.tokens), list(parent.roles)
            t.log_probs, t.calls = list(parent.log_probs), list(parent.calls)
        self.all.append(t)
        return t

    def _start(self, t: GroupTrajectory) -> None:
        self.tasks.add(asyncio.ensure_future(self._trajectory(t)))

    async def _trajectory(self, t: GroupTrajectory) -> None:
        while True:
            room = self.max_response - len(t.tokens)
            if room <= 0:
                t.finish = "length"
                return
            gen = await self.generate(self.prompt + t.tokens, room)
            call = self._take(t, gen, room)
            if call is None:
                return
            tool, content = call
            if len(t.calls) >= self.max_turns or len(t.tokens) >= self.max_response:
                t.finish = "turns" if len(t.calls) >= self.max_turns else "length"
                return
            t.calls.append((tool, "pending"))
            reply = await self.call_tool(tool, content)
            t.calls[-1] = (tool, reply.status)
            ids = self.encode(format_result(reply.text))
            room = self.max_response - len(t.tokens)
            kept = ids[:room]
            t.tokens += kept
            t.roles += [ROLE_TOOL_RESULT] * len(kept)
            t.log_probs += [0.0] * len(kept)
            if len(ids) >= room:  # no room left to answer: the trajectory ends on the result
                t.finish = "length"
                return
            self._decide(t)

    def _take(self, t: GroupTrajectory, gen: Generation, room: int) -> tuple[str, str] | None:
        """Append the reply's tokens up to EOS or the first closing tool tag; end the segment
        (its entropy) and return the call, or None when the trajectory finished."""
        toks = [int(x) for x in gen.token_ids][:room]
        text, chars, call, cut = "", [], None, len(toks)
        for j, tok in enumerate(toks):
            if tok in self.eos:
                cut = j + 1
                break
            p = self.piece(tok)
            text += p
            chars.append(len(text))
            if p and ">" in p:
                found = detect_call(text, self.tools)
                if found is not None:
                    call, cut = found, j + 1
                    break
        kept = toks[:cut]
        start = len(t.tokens)
        t.tokens += kept
        t.roles += [ROLE_MODEL] * len(kept)
        lp = list(gen.log_probs or [])[:cut]
        t.log_probs += lp + [0.0] * (len(kept) - len(lp))
        h = self._segment_entropy(gen, len(kept))
        t.seg_hs.append(h)
        if call is None:
            t.finish = "eos" if kept and kept[-1] in self.eos else "length"
            return None
        tool, content, start_char = call
        first = next(i for i, c in enumerate(chars) if c > start_char)
        for i in range(start + first, len(t.tokens)):
            t.roles[i] = ROLE_TOOL_CALL
        t.last_h = h
        if t.base_h is None:
            t.base_h = h
        return tool, content

    def _segment_entropy(self, gen: Generation, kept: int) -> float:
        hs = list(gen.topk_entropy or [])[: min(kept, self.b.entropy_tokens)]
        return segment_entropy(sum(hs), self.vocab)

    def _decide(self, t: GroupTrajectory) -> None:
        k = fork_budget(self.b, self.b.n - len(self.all))
        if k == 0:
            return
        delta = entropy_delta(t.last_h, t.base_h)
        go = branch_decision(self.b, delta, self.rng.random(), self.counter.c[0])
        t.decisions.append((float(delta), bool(go)))
        self.counter.decided(0, go)
        if go:
            for _ in range(k):
                self._start(self._new("branch", parent=t))
