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
trajectory.

AEPO as the local engine runs it: with `consecutive_count=iteration` the groups of a batch share a
`Lockstep` (trajectories wait at their decisions until every live one of the batch does; then the
iteration is decided at once, refills and the counter c included: `branching.lockstep_forks`,
`ConsecutiveCounter`, the local loop's own functions); with `dynamic_rollouts` each group first
runs the root sample and the monitoring tool rollout, both discarded, and starts
`branching.dynamic_rollout_count`'s m initial rollouts.
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
    dynamic_rollout_count,
    entropy_delta,
    fork_budget,
    lockstep_forks,
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
    decisions: list[tuple[float, bool, int]] = field(default_factory=list)  # its own: (ΔH, branched, c)
    waiting: asyncio.Future | None = field(default=None, repr=False)  # at a lock-step decision

    @property
    def loss_mask(self) -> list[int]:
        return [0 if r == ROLE_TOOL_RESULT else 1 for r in self.roles]

    def summary(self) -> dict[str, Any]:
        """What the trainer reads back per row (verl's extra_fields): metrics and token roles."""
        return {
            "origin": self.origin,
            "parent": -1 if self.parent is None else int(self.parent),
            "calls": [list(c) for c in self.calls],
            "decisions": [[float(d), bool(b), int(c)] for d, b, c in self.decisions],
            "roles": [int(r) for r in self.roles],
            "segment_entropy": [float(h) for h in self.seg_hs],
            "finish": self.finish,
        }


@dataclass
class GroupResult:
    trajectories: list[GroupTrajectory]  # session order
    stats: dict[str, float]
    dynamic: tuple[float, float, int] | None = None  # AEPO's (H_root, H̄_tool, initial count m)


class Lockstep:
    """AEPO's lock-step iterations over the groups of one batch (`consecutive_count=iteration`).

    AEPO's rollout loop decides every waiting trajectory of the batch at once, then moves each
    prompt's consecutive-branch counter c (`ConsecutiveCounter`): c += 1 for prompts that gained a
    rollout (a branch or a fresh one), 0 for the others, unchanged when none did. The server loop
    keeps that: every group of the batch joins one `Lockstep`; a trajectory whose tool result is in
    waits here; when every live trajectory of every group waits (or none is live), `_iteration`
    decides them all with the local engine's function (`branching.lockstep_forks`), refills the
    groups with nothing live and room left (as `rollout._iteration` does), moves c and releases
    them. `groups` is how many will join: nothing is decided before all have (a group still in its
    dynamic phase has not), and one that fails or never starts must `leave` it."""

    def __init__(self, groups: int):
        self.expected = int(groups)
        self.members: list[GroupRollout] = []
        self.counter = ConsecutiveCounter(self.expected, "iteration")
        self.iterations = 0

    def join(self, group: GroupRollout) -> int:
        if len(self.members) >= self.expected:
            raise RuntimeError(f"a lock-step batch of {self.expected} groups got one more")
        self.members.append(group)
        return len(self.members) - 1

    def leave(self, group: GroupRollout | None = None) -> None:
        """A group that failed (or never joined: None) stops holding the others back."""
        if group is None or group not in self.members:
            self.expected -= 1
        else:
            group.failed = True
        self.check()

    def check(self) -> None:
        """Run an iteration when nothing can advance without one (called at every change)."""
        if len(self.members) < self.expected:
            return
        active = [g for g in self.members if not g.failed]
        live = [t for g in active for t in g.live()]
        if any(t.waiting is None for t in live):
            return  # some trajectory is still generating or calling its tool
        if live or any(g.room() > 0 and not g.settled for g in active):
            self._iteration(active)
        for g in active:
            g.settle_if_complete()

    def _iteration(self, active: list[GroupRollout]) -> None:
        gained: set[int] = set()
        starts: list[tuple[GroupRollout, GroupTrajectory]] = []
        release: list[GroupTrajectory] = []
        for g in active:
            waiting = sorted((t for t in g.live() if t.waiting is not None), key=lambda t: t.session)
            release += waiting
            c = self.counter.c[g.index]
            made, decided = lockstep_forks(
                g.b, g.room(), [entropy_delta(t.last_h, t.base_h) for t in waiting], c, g.rng.random
            )
            for j, delta, go in decided:
                waiting[j].decisions.append((delta, go, c))
            for j in made:
                starts.append((g, g._new("branch", parent=waiting[j])))
            if made:
                gained.add(g.index)
        for g in active:  # a group with nothing live (branches are) and room left gets fresh rollouts
            if g.live() or g.room() <= 0:
                continue
            for _ in range(g.room() if g.b.refill == "all" else 1):
                starts.append((g, g._new("fresh")))
            gained.add(g.index)
        if release or gained:  # as the local loop counts: every decided iteration, and refills
            self.iterations += 1
        self.counter.iteration_done(gained)
        for t in release:
            waiting, t.waiting = t.waiting, None
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
        for g, t in starts:
            g._start(t)


class GroupRollout:
    """One prompt's trajectories. `encode(text)` tokenises a tool result; `piece(token)` decodes
    one token (tool tags are found in the decoded text); `vocab_size` normalises entropies.
    `lockstep`: the batch's `Lockstep` (AEPO with `consecutive_count=iteration`; a group alone
    gets its own)."""

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
        lockstep: Lockstep | None = None,
    ):
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
        self.lock = (lockstep or Lockstep(1)) if branch.lockstep else None
        self.index = 0
        self.failed = False
        self.settled = False
        self.dynamic: tuple[float, float, int] | None = None  # AEPO's (H_root, H̄_tool, m)

    # -- the group ------------------------------------------------------------------------
    def room(self) -> int:
        return self.b.n - len(self.all)

    def live(self) -> list[GroupTrajectory]:
        return [t for t in self.all if not t.finish]

    async def run(self, prompt_ids: Sequence[int]) -> GroupResult:
        self.prompt = [int(t) for t in prompt_ids]
        self.all: list[GroupTrajectory] = []
        self.tasks: set[asyncio.Task] = set()
        try:
            count = self.b.initial_rollouts
            if self.b.mode == "aepo" and self.b.dynamic_rollouts:
                self.dynamic = await self._dynamic_phase()
                count = self.dynamic[2]
            if self.lock is not None:
                await self._run_lockstep(count)
            else:
                await self._run_free(count)
        except BaseException:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if self.lock is not None:
                self.lock.leave(self if self in self.lock.members else None)
            raise
        if len(self.all) != self.b.n:  # the invariant the design rests on
            raise RuntimeError(f"a group ended with {len(self.all)} trajectories, budget {self.b.n}")
        decisions = [d[:2] for t in self.all for d in t.decisions]
        stats = rollout_stats(
            [t.origin for t in self.all],
            [t.calls for t in self.all],
            decisions,
            1,
            self.b.n,
            [h for t in self.all for h in t.seg_hs],
        )
        if self.dynamic is not None:
            stats["agent/h_root_mean"], stats["agent/h_tool_mean"] = self.dynamic[:2]
        if self.lock is not None:
            stats["agent/iterations"] = float(self.lock.iterations)
        return GroupResult(list(self.all), stats, self.dynamic)

    async def _run_free(self, count: int) -> None:
        """ARPO, or AEPO counting c per decision: every trajectory decides on its own."""
        for _ in range(count):
            self._start(self._new("initial"))
        while True:
            while self.tasks:
                done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self.tasks.discard(task)
                    task.result()  # a failed trajectory fails the group
            short = self.room()
            if short <= 0:
                return
            for _ in range(short if self.b.refill == "all" else 1):
                self._start(self._new("fresh"))

    async def _run_lockstep(self, count: int) -> None:
        """AEPO with c per iteration: decisions and refills come from the batch's `Lockstep`."""
        self.done = asyncio.get_running_loop().create_future()
        for _ in range(count):
            self._new("initial")
        self.index = self.lock.join(self)
        for t in list(self.all):
            self._start(t)
        self.lock.check()
        await self.done

    def settle_if_complete(self) -> None:
        if not self.settled and self.room() <= 0 and not self.live():
            self.settled = True
            if not self.done.done():
                self.done.set_result(None)

    def _on_task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            if not self.done.done():
                self.done.set_exception(task.exception())
            return
        self.lock.check()

    async def _dynamic_phase(self) -> tuple[float, float, int]:
        """AEPO's entropy-balanced count, as the local engine's `_dynamic_phase`: a root sample of
        `entropy_tokens` tokens (H_root: its first segment) and one monitoring tool rollout without
        branching (H̄_tool: the mean over all its segments), both discarded."""
        root = GroupTrajectory(session=-1, origin="root")
        k = min(self.b.entropy_tokens, self.max_response)
        self._take(root, await self.generate(list(self.prompt), k), k)
        monitor = GroupTrajectory(session=-1, origin="monitor")
        await self._trajectory(monitor)
        self.probes = (root, monitor)  # kept for inspection (tests, debugging)
        return dynamic_rollout_count(self.b.n, root.seg_hs, monitor.seg_hs)

    def _new(self, origin: str, parent: GroupTrajectory | None = None) -> GroupTrajectory:
        t = GroupTrajectory(session=len(self.all), origin=origin)
        if parent is not None:
            t.parent, t.forked_at = parent.session, len(parent.tokens)
            t.tokens, t.roles = list(parent.tokens), list(parent.roles)
            t.log_probs, t.calls = list(parent.log_probs), list(parent.calls)
        self.all.append(t)
        return t

    def _start(self, t: GroupTrajectory) -> None:
        task = asyncio.ensure_future(self._trajectory(t))
        self.tasks.add(task)
        if self.lock is not None:
            task.add_done_callback(self._on_task_done)

    async def _trajectory(self, t: GroupTrajectory) -> None:
        try:
            await self._turns(t)
        finally:
            t.finish = t.finish or "error"

    async def _turns(self, t: GroupTrajectory) -> None:
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
            if t.origin == "monitor":  # AEPO's monitoring rollout never branches
                continue
            if self.lock is not None:
                waiting = t.waiting = asyncio.get_running_loop().create_future()
                self.lock.check()  # may decide (and release) at once: the last to arrive
                await waiting
            else:
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
        c = self.counter.c[0]
        go = branch_decision(self.b, delta, self.rng.random(), c)
        t.decisions.append((float(delta), bool(go), int(c)))
        self.counter.decided(0, go)
        if go:
            for _ in range(k):
                self._start(self._new("branch", parent=t))
