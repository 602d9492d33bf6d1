"""Multi-turn tool rollouts with ARPO/AEPO branching over one batched KV cache (`HFDecoder`).

Every trajectory of the step is a row of the decoder. Per decode step: rows whose result has been
fed take their branching decision (forks are cache-row copies, appended as new rows); rows with
fresh logits sample; the sampled token is checked for EOS, the length limit and a closing tool tag
(which sends the call to the `ToolBox` thread pool); prompts with no live trajectory but budget
left get fresh rows (their prompt is fed token by token); then one forward feeds each row its next
token or a masked pad. Tools run while the other rows decode, but their results are handed back
only when no row can advance without one: then the loop waits for every pending call and gives
each row its result tokens, in row order. Which rows sample at which decode step (and so the
sampler's random stream) therefore never depends on how fast a tool answered: the same weights,
prompts and seed give the same trajectories (`test_rollout_does_not_depend_on_tool_timing`).

The result is exactly `n` trajectories per prompt: initial + branches + fresh, never more, and
never fewer, since a prompt with budget left always gets a fresh row once its rows are done.

AEPO with its consecutive-branch counter per iteration (`agent.aepo.consecutive_count=iteration`,
the default) is lock-step at the decisions, as AEPO's loop is: a row whose tool result has been
fed waits until every live row has either finished or reached its decision; then the whole
iteration is decided at once (branches, refills, the counter). ARPO and `decision` counting stay
asynchronous. AEPO's dynamic rollouts run a first phase per step: a short root sample and one
monitoring tool rollout per prompt, both discarded, which set each prompt's initial count.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from archer.core.agent.branching import (
    BranchSettings,
    ConsecutiveCounter,
    branch_decision,
    dynamic_rollout_count,
    entropy_delta,
    fork_budget,
    lockstep_forks,
    segment_entropy,
    token_entropies,
)
from archer.core.agent.protocol import (
    ROLE_MODEL,
    ROLE_TOOL_CALL,
    ROLE_TOOL_RESULT,
    detect_call,
    format_result,
)
from archer.core.agent.stats import rollout_stats
from archer.core.agent.tokens import TokenText


@dataclass
class Trajectory:
    """One trajectory: its response tokens (model and tool), their roles, and what happened."""

    id: int
    group: int
    origin: str  # initial | branch | fresh (returned); root | monitor (AEPO's dynamic phase, discarded)
    parent: int | None = None
    forked_at: int = 0  # a branch: response tokens shared with its parent
    tokens: list[int] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (tool, status)
    finish: str = ""  # eos | length | turns
    # decode state
    status: str = "gen"  # gen | feed | tool | done
    feed: deque = field(default_factory=deque)
    feeding_prompt: bool = False
    pending: int | None = None
    ready: bool = False  # has logits for its next token
    need_decision: bool = False
    future: Future | None = None
    # the current segment (text since the prompt or the last tool result)
    seg_text: str = ""
    seg_chars: list[int] = field(default_factory=list)  # cumulative chars per segment token
    seg_start: int = 0  # index in tokens where the segment starts
    seg_n: int = 0
    seg_h: float = 0.0
    # entropies (normalised segment entropies, see branching)
    base_h: float | None = None
    last_h: float | None = None
    seg_hs: list[float] = field(default_factory=list)  # every segment's entropy, in order

    @property
    def counted(self) -> bool:
        """Part of the prompt's budget (the dynamic phase's root and monitor rows are not)."""
        return self.origin not in ("root", "monitor")

    @property
    def truncated(self) -> bool:
        return self.finish != "eos"

    @property
    def turns(self) -> int:
        return len(self.calls)


@dataclass
class AgentBatch:
    """A step's trajectories, prompt-major (n per prompt), and its rollout statistics."""

    trajectories: list[Trajectory]
    n: int
    stats: dict[str, float]
    decisions: list[
        tuple[int, float, bool, int, int]
    ]  # (group, ΔH, branched, trajectory id, tool call number)


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_response_tokens: int = 128
    max_turns: int = 3


def sample_tokens(logits: torch.Tensor, s: SamplingSettings, generator: torch.Generator) -> torch.Tensor:
    """One token per row (temperature 0 is greedy)."""
    if s.temperature <= 0:
        return logits.argmax(-1)
    scaled = logits / s.temperature
    if s.top_k and s.top_k > 0:
        kth = scaled.topk(min(s.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > s.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
    probs = scaled.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


class AgentRollout:
    """Runs one step's multi-turn rollouts. `decoder` is an `HFDecoder` (or a test double with
    the same prefill/step/select/add_empty methods); `toolbox` a `ToolBox`."""

    def __init__(
        self,
        decoder: Any,
        tokenizer: Any,
        toolbox: Any,
        branch: BranchSettings,
        sampling: SamplingSettings,
        *,
        eos_ids: Sequence[int],
        seed: int = 0,
        vocab_size: int | None = None,
        max_steps: int = 100_000,
    ):
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.toolbox = toolbox
        self.branch = branch
        self.s = sampling
        self.eos = set(int(e) for e in eos_ids)
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab = int(vocab_size or len(tokenizer))
        self.max_steps = max_steps
        self._text = TokenText(tokenizer)
        self.tools = tuple(getattr(toolbox, "available", ()) or ())

    # ------------------------------------------------------------------ the loop
    def run(self, prompts: Sequence[Sequence[int]]) -> AgentBatch:
        b = self.branch
        G = len(prompts)
        self.prompts = [list(p) for p in prompts]
        self.all: list[Trajectory] = []
        self.alloc = [0] * G
        self.live = [0] * G
        self.counter = ConsecutiveCounter(G, b.consecutive_count)
        self.decisions: list[tuple[int, float, bool, int, int]] = []
        self.fresh_added = 0
        self.iterations = 0
        self.dynamic: list[tuple[float, float, int]] | None = None  # per prompt (H_root, H̄_tool, m)
        counts = [b.initial_rollouts] * G
        if b.mode == "aepo" and b.dynamic_rollouts:
            self.dynamic = self._dynamic_phase()
            counts = [m for _, _, m in self.dynamic]
        rows = [self._new(g, "initial") for g in range(G) for _ in range(counts[g])]
        self._loop(rows, main=True)
        return self._finish()

    def _loop(self, rows: list[Trajectory], *, main: bool) -> None:
        """Decode `rows` (and what they branch into) until every row is done."""
        logits = self.decoder.prefill([self.prompts[t.group] for t in rows])
        for t in rows:
            t.ready = True
        steps = 0
        while True:
            steps += 1
            if steps > self.max_steps:
                raise RuntimeError(f"agent rollout did not finish within {self.max_steps} decode steps")
            if main:
                rows, logits = self._decide(rows, logits)
            self._sample(rows, logits)
            if main:
                rows, logits = self._refill(rows, logits)
            rows, logits = self._compact(rows, logits)
            if not rows:
                break
            feeds = [self._next_input(t) for t in rows]
            if all(f is None for f in feeds):  # every live row waits for a tool
                if not self._harvest(rows):
                    raise RuntimeError("agent rollout stalled: no row can advance")  # a bug, not a user error
                continue
            real = torch.tensor([f is not None for f in feeds])
            toks = torch.tensor([f if f is not None else 0 for f in feeds], dtype=torch.long)
            new_logits = self.decoder.step(toks, real)
            logits = torch.where(real[:, None].to(new_logits.device), new_logits, logits)
            for t, f in zip(rows, feeds):
                if f is None:
                    continue
                if t.status == "gen":
                    t.ready = True
                elif t.status == "feed" and not t.feed:
                    t.status, t.ready, t.feeding_prompt = "gen", True, False

    def _dynamic_phase(self) -> list[tuple[float, float, int]]:
        """AEPO's entropy-balanced global-rollout count, as its code runs it
        (`_calculate_initial_rollouts_dynamical`): per prompt, a root sample of `entropy_tokens`
        tokens gives H_root; one tool rollout without branching gives H̄_tool, the mean entropy of
        all its segments (the first, from the prompt, and the last, the answer, included); both are
        discarded. m = clip(int(n·σ(0.5·(H_root − H̄_tool))) + 1, 1, n)."""
        G = len(self.prompts)
        rows = [Trajectory(id=-1, group=g, origin=o) for g in range(G) for o in ("root", "monitor")]
        self._loop(rows, main=False)
        self.probes = rows  # kept until the next run, for inspection (tests, debugging)
        return [
            dynamic_rollout_count(self.branch.n, rows[2 * g].seg_hs, rows[2 * g + 1].seg_hs) for g in range(G)
        ]

    def _new(self, group: int, origin: str, parent: Trajectory | None = None) -> Trajectory:
        t = Trajectory(id=len(self.all), group=group, origin=origin)
        if parent is not None:
            t.parent, t.forked_at = parent.id, len(parent.tokens)
            t.tokens, t.roles, t.calls = list(parent.tokens), list(parent.roles), list(parent.calls)
            t.status, t.ready, t.seg_start = parent.status, parent.ready, len(parent.tokens)
        self.all.append(t)
        self.alloc[group] += 1
        self.live[group] += 1
        return t

    def _next_input(self, t: Trajectory) -> int | None:
        if t.pending is not None:
            tok, t.pending = t.pending, None
            return tok
        if t.status == "feed" and t.feed:
            return t.feed.popleft()
        return None

    def _harvest(self, rows: list[Trajectory]) -> int:
        """Wait for every pending tool call and turn the results into tokens to feed, in row order
        (never "whichever finished first": that would make the rollout depend on tool timing).
        Returns the number of calls collected."""
        collected = 0
        for t in rows:
            if t.status != "tool" or t.future is None or t.pending is not None:
                continue
            result = t.future.result()
            collected += 1
            t.future = None
            tool = t.calls[-1][0]
            t.calls[-1] = (tool, result.status)
            ids = self._text.encode(format_result(result.text))
            room = self.s.max_response_tokens - len(t.tokens)
            t.tokens += ids[:room]
            t.roles += [ROLE_TOOL_RESULT] * len(ids[:room])
            if len(ids) >= room:  # no room left to answer: the trajectory ends on the result
                self._done(t, "length")
                continue
            t.feed = deque(ids)
            t.status, t.ready = "feed", False
            t.need_decision = t.counted  # the dynamic phase's monitor never branches
            self._new_segment(t)
        return collected

    def _new_segment(self, t: Trajectory) -> None:
        t.seg_text, t.seg_chars, t.seg_start, t.seg_n, t.seg_h = "", [], len(t.tokens), 0, 0.0

    def _at_decision(self, t: Trajectory) -> bool:
        return t.need_decision and t.ready and t.status == "gen"

    def _delta(self, t: Trajectory) -> float:
        return entropy_delta(t.last_h, t.base_h)

    def _branches(self, t: Trajectory, u: float) -> bool:
        return branch_decision(self.branch, self._delta(t), u, self.counter.c[t.group])

    def _decide(self, rows: list[Trajectory], logits: torch.Tensor) -> tuple[list[Trajectory], torch.Tensor]:
        """Branching decisions of rows whose tool result has been fed (they have fresh logits)."""
        if self.branch.lockstep:
            live = [t for t in rows if t.status != "done"]
            if live and all(self._at_decision(t) for t in live):
                return self._iteration(rows, logits)
            return rows, logits
        b = self.branch
        forks: list[int] = []
        planned = [0] * len(self.prompts)  # forks decided this round, not yet allocated
        for i, t in enumerate(rows):
            if not self._at_decision(t):
                continue
            t.need_decision = False
            g = t.group
            k = fork_budget(b, b.n - self.alloc[g] - planned[g])
            if k == 0:
                continue
            go = self._branches(t, self.rng.random())
            self.decisions.append((g, float(self._delta(t)), bool(go), t.id, len(t.calls)))
            self.counter.decided(g, go)
            if not go:
                continue
            planned[g] += k
            forks += [i] * k
        return self._fork(rows, logits, forks)

    def _fork(
        self, rows: list[Trajectory], logits: torch.Tensor, forks: list[int]
    ) -> tuple[list[Trajectory], torch.Tensor]:
        """Copy rows `forks` (indices into `rows`, repeats allowed) as branches, cache included."""
        if not forks:
            return rows, logits
        new_rows = list(rows)
        for i in forks:
            src = rows[i]
            new_rows.append(self._new(src.group, "branch", parent=src))
        idx = torch.cat([torch.arange(len(rows)), torch.tensor(forks, dtype=torch.long)])
        self.decoder.select(idx)
        return new_rows, logits[idx.to(logits.device)]

    def _iteration(
        self, rows: list[Trajectory], logits: torch.Tensor
    ) -> tuple[list[Trajectory], torch.Tensor]:
        """End of one lock-step iteration, as AEPO's loop ends one (`vllm_rollout_with_tools.py:
        911-1036`): every live row is at its decision. Per prompt, in row order, each row makes up to
        beam_size − 1 copies, one draw per copy, while the prompt has room; a prompt with no live
        row and room gets fresh rollouts; then the counter moves (`ConsecutiveCounter`)."""
        b = self.branch
        self.iterations += 1
        waiting = [i for i, t in enumerate(rows) if self._at_decision(t)]
        forks: list[int] = []
        gained: set[int] = set()
        by_prompt: dict[int, list[int]] = {}
        for i in waiting:
            by_prompt.setdefault(rows[i].group, []).append(i)
        for g, idxs in by_prompt.items():
            made, decided = lockstep_forks(
                b,
                b.n - self.alloc[g],
                [self._delta(rows[i]) for i in idxs],
                self.counter.c[g],
                self.rng.random,
            )
            for j, delta, go in decided:
                t = rows[idxs[j]]
                self.decisions.append((g, delta, go, t.id, len(t.calls)))
            forks += [idxs[j] for j in made]
            if made:
                gained.add(g)
        for i in waiting:
            rows[i].need_decision = False
        rows, logits = self._fork(rows, logits, forks)
        rows, logits, fresh = self._add_fresh(rows, logits, self._refill_plan())
        gained |= fresh
        self.counter.iteration_done(gained)
        return rows, logits

    def _sample(self, rows: list[Trajectory], logits: torch.Tensor) -> None:
        which = [
            i
            for i, t in enumerate(rows)
            if t.status == "gen" and t.ready and t.pending is None and not t.need_decision
        ]
        if not which:
            return
        idx = torch.tensor(which, dtype=torch.long, device=logits.device)
        sub = logits[idx]
        toks = sample_tokens(sub, self.s, self.gen).tolist()
        k = self.branch.entropy_tokens
        need_h = [i for i, r in enumerate(which) if rows[r].seg_n < k]
        trunc = None
        if need_h:
            _, trunc_t = token_entropies(sub[need_h], max(self.s.temperature, 1e-6), self.branch.entropy_topk)
            trunc = dict(zip(need_h, trunc_t.tolist()))
        for j, (r, tok) in enumerate(zip(which, toks)):
            t = rows[r]
            t.ready = False
            if trunc is not None and j in trunc:
                t.seg_h += trunc[j]
                t.seg_n += 1
            t.tokens.append(int(tok))
            t.roles.append(ROLE_MODEL)
            if int(tok) in self.eos:
                self._segment_done(t)
                self._done(t, "eos")
                continue
            piece = self._text.piece(int(tok))
            t.seg_text += piece
            t.seg_chars.append(len(t.seg_text))
            call = detect_call(t.seg_text, self.tools) if piece and ">" in piece else None
            if t.origin == "root" and (call is not None or t.seg_n >= k):
                self._segment_done(t)  # AEPO's root sample: only its first segment's entropy
                self._done(t, "root")
            elif call is not None:
                self._on_call(t, *call)
            elif len(t.tokens) >= self.s.max_response_tokens:
                self._segment_done(t)
                self._done(t, "length")
            else:
                t.pending = int(tok)

    def _segment_done(self, t: Trajectory) -> float:
        """Record the entropy of the segment that just ended (normalised by ln |V|)."""
        h = segment_entropy(t.seg_h, self.vocab)
        t.seg_hs.append(h)
        return h

    def _on_call(self, t: Trajectory, tool: str, content: str, start_char: int) -> None:
        h = self._segment_done(t)
        t.last_h = h
        if t.base_h is None:
            t.base_h = h
        first = next(i for i, c in enumerate(t.seg_chars) if c > start_char)
        for i in range(t.seg_start + first, len(t.tokens)):
            t.roles[i] = ROLE_TOOL_CALL
        if len(t.calls) >= self.s.max_turns or len(t.tokens) >= self.s.max_response_tokens:
            self._done(t, "turns" if len(t.calls) >= self.s.max_turns else "length")
            return
        t.calls.append((tool, "pending"))
        t.pending = t.tokens[-1]  # the closing tag is fed, then the row waits for its result
        t.status = "tool"
        t.future = self.toolbox.submit(tool, content)

    def _done(self, t: Trajectory, finish: str) -> None:
        t.status, t.finish, t.pending, t.ready, t.need_decision = "done", finish, None, False, False
        if t.counted:
            self.live[t.group] -= 1

    def _refill_plan(self) -> list[int]:
        """Prompts (repeated per row) that get fresh rollouts: budget left and nothing live."""
        b = self.branch
        add: list[int] = []
        for g in range(len(self.prompts)):
            if self.live[g] > 0 or self.alloc[g] >= b.n:
                continue
            short = b.n - self.alloc[g]
            add += [g] * (short if b.refill == "all" else 1)
        return add

    def _add_fresh(
        self, rows: list[Trajectory], logits: torch.Tensor, add: list[int]
    ) -> tuple[list[Trajectory], torch.Tensor, set[int]]:
        """Fresh rows (their prompt is fed token by token) for the prompts in `add`."""
        if not add:
            return rows, logits, set()
        self.fresh_added += len(add)
        self.decoder.add_empty(len(add))
        rows = list(rows)
        for g in add:
            t = self._new(g, "fresh")
            t.status, t.feeding_prompt, t.ready = "feed", True, False
            t.feed = deque(self.prompts[g])
            rows.append(t)
        pad = torch.zeros((len(add), logits.shape[-1]), dtype=logits.dtype, device=logits.device)
        return rows, torch.cat([logits, pad]), set(add)

    def _refill(self, rows: list[Trajectory], logits: torch.Tensor) -> tuple[list[Trajectory], torch.Tensor]:
        """Fresh rollouts for prompts with budget left and nothing live. Lock-step: only when no
        row is live at all (an iteration that ended every row; otherwise `_iteration` refills)."""
        if self.branch.lockstep:
            if any(t.status != "done" for t in rows):
                return rows, logits
            rows, logits, fresh = self._add_fresh(rows, logits, self._refill_plan())
            if fresh:  # an iteration that ended every live row, and refilled
                self.iterations += 1
                self.counter.iteration_done(fresh)
            return rows, logits
        rows, logits, _ = self._add_fresh(rows, logits, self._refill_plan())
        return rows, logits

    def _compact(self, rows: list[Trajectory], logits: torch.Tensor) -> tuple[list[Trajectory], torch.Tensor]:
        done = [i for i, t in enumerate(rows) if t.status == "done"]
        if not done or (len(done) < 8 and len(done) * 4 < len(rows) and len(done) < len(rows)):
            return rows, logits
        keep = [i for i, t in enumerate(rows) if t.status != "done"]
        if keep:
            idx = torch.tensor(keep, dtype=torch.long)
            self.decoder.select(idx)
            logits = logits[idx.to(logits.device)]
        return [rows[i] for i in keep], logits

    def _finish(self) -> AgentBatch:
        b = self.branch
        by_group: list[list[Trajectory]] = [[] for _ in self.prompts]
        for t in self.all:
            by_group[t.group].append(t)
        for g, ts in enumerate(by_group):
            if len(ts) != b.n:  # the invariant the whole design rests on
                raise RuntimeError(f"prompt {g} ended with {len(ts)} trajectories, budget {b.n}")
        trajs = [t for ts in by_group for t in ts]
        stats = rollout_stats(
            [t.origin for t in trajs],
            [t.calls for t in trajs],
            [(d[1], d[2]) for d in self.decisions],
            len(by_group),
            b.n,
            [h for t in trajs for h in t.seg_hs],
        )
        if self.branch.lockstep:
            stats["agent/iterations"] = float(self.iterations)
        if self.dynamic is not None:
            stats["agent/h_root_mean"] = float(np.mean([d[0] for d in self.dynamic]))
            stats["agent/h_tool_mean"] = float(np.mean([d[1] for d in self.dynamic]))
        return AgentBatch(trajs, b.n, stats, list(self.decisions))


def to_rollout(
    batch: AgentBatch, prompts: Sequence[Sequence[int]], pad_id: int
) -> tuple[Any, list[np.ndarray]]:
    """The engine's `Rollout` (response_mask: real tokens; loss_mask: 0 on tool results) and roles."""
    from archer.core.rollout.batch import Rollout, left_pad, right_pad

    trajs = batch.trajectories
    prompt_ids, prompt_mask = left_pad([list(prompts[t.group]) for t in trajs], pad_id)
    resp = [torch.tensor(t.tokens if t.tokens else [pad_id], dtype=torch.long) for t in trajs]
    response_ids = right_pad(resp, pad_id)
    R = response_ids.shape[1]
    response_mask = torch.zeros((len(trajs), R), dtype=torch.long)
    loss_mask = torch.zeros((len(trajs), R), dtype=torch.long)
    roles = []
    for i, t in enumerate(trajs):
        L = len(t.tokens)
        response_mask[i, :L] = 1
        r = np.asarray(t.roles, dtype=np.int8)
        loss_mask[i, :L] = torch.from_numpy((r != ROLE_TOOL_RESULT).astype(np.int64))
        roles.append(r)
    sample_of: dict[int, int] = {}
    sample = []
    for t in trajs:
        sample.append(sample_of.get(t.group, 0))
        sample_of[t.group] = sample[-1] + 1
    ro = Rollout(
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        torch.tensor([t.truncated for t in trajs]),
        [t.group for t in trajs],
        sample,
        loss_mask=loss_mask,
    )
    return ro, roles


def response_texts(tokenizer: Any, batch: AgentBatch) -> list[str]:
    return [tokenizer.decode(t.tokens, skip_special_tokens=True) for t in batch.trajectories]


DecoderFactory = Callable[[], Any]
