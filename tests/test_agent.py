"""Agent rollouts: ARPO/AEPO budget and base entropy, the decode loop's holes and forks, tool-token
masking (mask, zero gradient, trace roles), the AEPO loss, and an arpo-quickstart-style run."""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from archer.core.agent.branching import (
    BranchSettings,
    ConsecutiveCounter,
    aepo_branches,
    arpo_branches,
    dynamic_global_rollouts,
)
from archer.core.agent.protocol import ROLE_TOOL_CALL, ROLE_TOOL_RESULT, final_answer
from archer.core.agent.rollout import AgentRollout, SamplingSettings, to_rollout
from archer.core.models.tiny import build_char_tokenizer
from archer.core.tools import ToolResult

TOK = build_char_tokenizer()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: thread wake-ups on a shared 2-core machine cost more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


EOS = int(TOK.eos_token_id)
CALL = "<python>1+1</python>"


class ScriptedDecoder:
    """A decoder double: the next-token distribution is a function of each row's real tokens.

    At a decision point (end of prompt or of a tool result) the row starts a call ('<') with
    probability `p_call[prompt]` or answers '7'; a started call is written out deterministically;
    after the answer comes EOS. The prompt sets how uncertain (entropic) the decision is."""

    def __init__(self, p_call: dict[str, float]):
        self.p_call = p_call
        self.text: list[str] = []
        self.V = len(TOK)
        self.chars = {i: TOK.decode([i], skip_special_tokens=True) for i in range(self.V)}
        self.lt, self.seven = TOK.convert_tokens_to_ids("<"), TOK.convert_tokens_to_ids("7")
        self.call_ids = [TOK.convert_tokens_to_ids(c) for c in CALL]

    def _logits(self, text: str) -> torch.Tensor:
        out = torch.full((self.V,), -30.0)
        if "=" not in text:  # a fresh row still being fed its prompt: never sampled
            return out
        prompt, _, tail = text.partition("=")
        since = tail.rsplit("</result>", 1)[-1]
        if since == "":  # a decision point
            p = self.p_call[prompt + "="]
            out[self.lt] = math.log(max(p, 1e-9))
            out[self.seven] = math.log(max(1 - p, 1e-9))
        elif since.endswith("7") or len(since) >= len(CALL):  # answered, or waiting for its tool
            out[EOS] = 0.0
        else:
            out[self.call_ids[len(since)]] = 0.0
        return out

    def prefill(self, prompts):
        self.text = ["".join(self.chars[t] for t in p) for p in prompts]
        return torch.stack([self._logits(h) for h in self.text])

    def step(self, tokens, real):
        for i, (t, r) in enumerate(zip(tokens.tolist(), real.tolist())):
            if r:
                self.text[i] += self.chars[t]
        return torch.stack([self._logits(h) for h in self.text])

    def select(self, rows):
        self.text = [self.text[i] for i in rows.tolist()]

    def add_empty(self, k):
        self.text += [""] * k


class InstantTools:
    available = ("python",)

    def submit(self, name, content):
        f = Future()
        f.set_result(ToolResult("2", "ok"))
        return f


def ids(text: str) -> list[int]:
    return list(TOK(text, add_special_tokens=False)["input_ids"])


def scripted_run(prompts, p_call, settings, seed=0, runner=None, max_turns=3):
    dec = ScriptedDecoder(p_call)
    runner = runner or AgentRollout(
        dec,
        TOK,
        InstantTools(),
        settings,
        SamplingSettings(max_response_tokens=120, max_turns=max_turns),
        eos_ids=[EOS],
        seed=seed,
        vocab_size=len(TOK),
    )
    runner.decoder = dec
    runner.branch = settings
    return runner, runner.run([ids(p) for p in prompts])


# ---------------------------------------------------------------------------------------- rules
def test_arpo_rule_is_a_probability_clip_alpha_plus_beta_delta():
    rng = np.random.default_rng(0)
    for alpha, beta, dh in [
        (0.5, 0.2, 0.0),
        (0.3, 0.5, 0.6),
        (0.5, 0.2, -1.0),
        (0.0, 0.0, 0.0),
        (0.9, 0.2, -9),
    ]:
        us = rng.random(20000)
        rate = np.mean([arpo_branches(u, dh, alpha, beta) for u in us])
        assert rate == pytest.approx(min(1, max(0, alpha + beta * dh)), abs=0.02)


def test_aepo_rule_and_dynamic_rollouts():
    assert aepo_branches(0.6, 0.0, 0.5, 0.2, 0) and not aepo_branches(0.4, 0.0, 0.5, 0.2, 0)
    assert not aepo_branches(0.6, 0.0, 0.5, 0.2, 10)  # the consecutive-branch penalty: 0.6·0.5 < 0.5
    assert aepo_branches(0.45, 0.5, 0.5, 0.2, 0)  # a rising entropy makes branching likelier
    assert dynamic_global_rollouts(16, 1.0, 1.0) == 9  # σ(0)·16 + 1
    assert dynamic_global_rollouts(16, 10.0, 0.0) == 16 and dynamic_global_rollouts(16, -10.0, 0.0) == 1
    # AEPO clips the score to [0, 1] before comparing (vllm_rollout_with_tools.py:964-966): at α = 0 a
    # negative score still branches
    assert aepo_branches(0.1, -1.0, 0.0, 0.2, 0)


def test_aepo_consecutive_counter_counts_iterations_including_refills():
    """AEPO's c (vllm_rollout_with_tools.py:1025-1036): +1 for every prompt that gained a rollout in
    the iteration (a branch or a fresh refill), 0 for the others; untouched when nobody gained."""
    c = ConsecutiveCounter(3, "iteration")
    c.iteration_done({0})
    c.iteration_done({0, 2})  # prompt 2 gained a fresh rollout: that counts too
    assert c.c == [2, 0, 1]
    c.iteration_done(set())  # an iteration in which no prompt gained: nothing moves
    assert c.c == [2, 0, 1]
    c.iteration_done({1})
    assert c.c == [0, 1, 0]
    c.decided(1, False)  # decisions do not move an iteration counter
    assert c.c == [0, 1, 0]
    d = ConsecutiveCounter(2, "decision")  # archer's earlier rule: per decision, reset on any "no"
    d.decided(0, True)
    d.decided(0, True)
    d.decided(1, True)
    d.iteration_done({0})
    assert d.c == [2, 1]
    d.decided(0, False)
    assert d.c == [0, 1]


# ---------------------------------------------------------------------------------------- budget
def test_budget_is_never_exceeded_and_always_filled_over_many_seeds():
    prompts = ["1+1=", "2+2=", "3+3="]
    p_call = {"1+1=": 0.9, "2+2=": 0.5, "3+3=": 0.05}
    checked = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 9))
        s = BranchSettings(
            n=n,
            initial_rollouts=int(rng.integers(1, n + 1)),
            beam_size=int(rng.integers(1, 5)),
            branch_probability=float(rng.random()),
            entropy_weight=float(rng.random() * 2),
            mode=str(rng.choice(["arpo", "aepo", "none"])),
            refill=str(rng.choice(["one", "all"])),
            dynamic_rollouts=bool(rng.integers(0, 2)),
        )
        _, batch = scripted_run(prompts, p_call, s, seed=seed)
        for g in range(len(prompts)):
            group = [t for t in batch.trajectories if t.group == g]
            assert len(group) == n, (seed, s)
            assert all(t.status == "done" for t in group)
            origins = [t.origin for t in group]
            if not s.dynamic_rollouts or s.mode != "aepo":
                assert origins.count("initial") == s.initial_rollouts
            by_id = {x.id: x for x in batch.trajectories}
            for t in group:
                if t.origin == "branch":  # a branch shares its parent's history up to a tool result
                    k = t.forked_at
                    assert t.tokens[:k] == by_id[t.parent].tokens[:k] and t.roles[k - 1] == ROLE_TOOL_RESULT
        checked += 1
    assert checked == 30


class ScheduledTools:
    """Tools that answer after a scripted number of decode steps (`delays`, one per call in order),
    as a slow sandbox or search would. A result is also there as soon as the loop blocks on it
    (`result()`), and after 50 ms at the latest (a loop that waits some other way never hangs)."""

    available = ("python",)

    def __init__(self, delays):
        self.delays = list(delays)
        self.now = 0
        self.pending: list[tuple[int, Future]] = []
        self.lock = threading.Lock()

    def _finish(self, f):
        with self.lock:
            if not f.done():
                f.set_result(ToolResult("2", "ok"))

    def submit(self, name, content):
        tools = self

        class Scheduled(Future):
            def result(self, timeout=None):
                tools._finish(self)
                return super().result(timeout)

        f = Scheduled()
        delay = self.delays[len(self.pending) % len(self.delays)]
        self.pending.append((self.now + delay, f))
        if delay == 0:
            self._finish(f)
        else:
            timer = threading.Timer(0.05, self._finish, (f,))
            timer.daemon = True
            timer.start()
        return f

    def tick(self):
        self.now += 1
        for due, f in self.pending:
            if due <= self.now:
                self._finish(f)


class TickingDecoder(ScriptedDecoder):
    """The scripted decoder; each forward is one tick of the tools' clock."""

    def __init__(self, p_call, tools):
        super().__init__(p_call)
        self.tools = tools

    def step(self, tokens, real):
        self.tools.tick()
        return super().step(tokens, real)


@pytest.mark.parametrize("mode", ["arpo", "aepo"])
def test_rollout_does_not_depend_on_tool_timing(mode):
    """The same prompts and seed give the same trajectories whether the tools answer at once or
    after a few decode steps: results are handed back at points fixed by the decoding alone, so
    the sampler's random stream is drawn in the same order. (Handing back whichever call had
    finished made the arpo-quickstart's rewards differ between two runs of one commit.)"""
    prompts = ["1+1=", "2+2=", "3+3=", "4+4="]
    p_call = {"1+1=": 0.5, "2+2=": 0.6, "3+3=": 0.4, "4+4=": 0.5}
    s = BranchSettings(
        n=6, initial_rollouts=3, beam_size=2, branch_probability=0.5, entropy_weight=0.2, mode=mode
    )

    def run(delays):
        tools = ScheduledTools(delays)
        runner = AgentRollout(
            TickingDecoder(p_call, tools),
            TOK,
            tools,
            s,
            SamplingSettings(max_response_tokens=120, max_turns=3),
            eos_ids=[EOS],
            seed=5,
            vocab_size=len(TOK),
        )
        batch = runner.run([ids(p) for p in prompts])
        trajs = [(t.group, t.origin, t.parent, t.tokens, t.roles, t.calls) for t in batch.trajectories]
        return trajs, batch.decisions, len(tools.pending)

    at_once = run([0])
    assert at_once[2] >= 10  # enough calls for their timing to matter
    for seed in range(3):
        delays = np.random.default_rng(seed).integers(0, 8, size=64).tolist()
        assert run(delays) == at_once, seed


def test_no_branching_without_probability_and_entropy_weight():
    s = BranchSettings(n=6, initial_rollouts=2, beam_size=4, branch_probability=0.0, entropy_weight=0.0)
    for seed in range(10):
        _, batch = scripted_run(["1+1=", "2+2="], {"1+1=": 0.9, "2+2=": 0.9}, s, seed=seed)
        assert not any(t.origin == "branch" for t in batch.trajectories)
        assert batch.decisions and not any(d[2] for d in batch.decisions)
        assert batch.stats["agent/fresh_rollouts"] == 8  # the budget is filled by fresh rollouts instead


def test_base_entropy_is_per_trajectory_and_reset_for_every_prompt():
    """ARPO's bug: the base entropy was keyed by batch index and never cleared, so in step 2 a
    trajectory compared itself with step 1's prompt. Here one runner does two steps with prompts of
    very different entropy; every first tool call must see ΔH = 0 (its own base)."""
    s = BranchSettings(n=8, initial_rollouts=4, beam_size=2, branch_probability=0.5, entropy_weight=1.0)
    runner, step1 = scripted_run(["1+1="], {"1+1=": 0.5, "2+2=": 0.97}, s, seed=1, max_turns=3)
    _, step2 = scripted_run(["2+2="], {"1+1=": 0.5, "2+2=": 0.97}, s, seed=2, runner=runner, max_turns=3)

    def own_first_segment(p):  # the decision token's entropy (the rest of the segment is certain), / ln V
        return -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(len(TOK))

    for batch, p in ((step1, 0.5), (step2, 0.97)):
        based = [t for t in batch.trajectories if t.base_h is not None and t.origin == "initial"]
        assert based
        for t in based:
            assert t.base_h == pytest.approx(own_first_segment(p), abs=1e-3)
        firsts = [d for d in batch.decisions if d[4] == 1]
        assert firsts and all(d[1] == 0.0 for d in firsts)  # the lag: ΔH = 0 at each first call
    # later calls compare with their own trajectory's base, never with the other step's prompt
    later = [d for d in step2.decisions if d[4] > 1]
    traj = {t.id: t for t in step2.trajectories}
    for _g, delta, _, tid, _ in later:
        t = traj[tid]
        if t.base_h is not None:
            assert abs(delta) < 0.05


# ---------------------------------------------------------------------------------------- AEPO loop
def aepo_source_stats(p_call, n, initial, max_turns, penalty, runs=4000):
    """AEPO's transcribed loop over `runs` seeded runs (beam 2, alpha 0.5): branches per run,
    mean fresh rollouts, branch rate — the reference both engines' statistics are checked against."""
    import random

    rng = random.Random(0)
    ref = [aepo_source_loop(p_call, n, initial, 2, 0.5, max_turns, penalty, rng) for _ in range(runs)]
    branches = np.array([sum(r[0]) for r in ref], dtype=float)
    return branches, np.mean([sum(r[1]) for r in ref]), sum(r[3] for r in ref) / sum(r[2] for r in ref)


def aepo_source_loop(p_call, n, initial, beam, alpha, max_turns, penalty, rng):
    """AEPO's lock-step rollout loop (wangevan6/ARPO adacf0c = upstream 30efc15,
    AEPO/verl_aepo_entropy/verl/workers/rollout/vllm_rollout/vllm_rollout_with_tools.py) transcribed
    for the scripted process with β = 0: at each decision point a row calls a tool with probability
    p_call[prompt] or answers. Returns per prompt (branches, fresh rollouts) and (decisions, branched)."""
    G = len(p_call)
    rows = [[g, 0] for g in range(G) for _ in range(initial)]  # (prompt, tool calls)
    active = list(range(len(rows)))
    count, c = [initial] * G, [0] * G  # :678-680 c reset per step
    branches, fresh, decisions, branched = [0] * G, [0] * G, 0, 0
    while active:
        going = []
        for i in active:  # each active row generates one segment: a call it may make, or its end
            g, calls = rows[i]
            if rng.random() < p_call[g] and calls < max_turns:  # :771-781 (over the limit: EOS, :785-791)
                rows[i][1] += 1
                going.append(i)
        by_prompt: dict[int, list[int]] = {}
        for i in going:
            by_prompt.setdefault(rows[i][0], []).append(i)
        new = []
        for g, idxs in by_prompt.items():  # :934-995
            room = n - count[g]
            if room <= 0:
                continue
            made = 0
            for i in idxs:
                k = min(beam - 1, room - made)
                if k <= 0:
                    break
                for _ in range(k):  # one draw per copy
                    decisions += 1
                    score = rng.random() * max(0.0, 1.0 - penalty * c[g])  # β = 0: no ΔH term
                    if min(1.0, max(0.0, score)) < alpha:
                        continue
                    branched += 1
                    branches[g] += 1
                    made += 1
                    count[g] += 1
                    new.append((g, rows[i][1]))
        for g in range(G):  # :997-1013: one fresh rollout for a prompt with nothing active
            if g not in by_prompt and count[g] < n:
                fresh[g] += 1
                count[g] += 1
                new.append((g, 0))
        if new:  # :1025-1036
            gained = {g for g, _ in new}
            c = [c[g] + 1 if g in gained else 0 for g in range(G)]
            for g, calls in new:
                rows.append([g, calls])
                going.append(len(rows) - 1)
        active = going
    return branches, fresh, decisions, branched


def aepo_run(prompts, p_call, settings, seed, max_turns):
    dec = ScriptedDecoder(p_call)
    runner = AgentRollout(
        dec,
        TOK,
        InstantTools(),
        settings,
        SamplingSettings(max_response_tokens=400, max_turns=max_turns),  # the length never binds
        eos_ids=[EOS],
        seed=seed,
        vocab_size=len(TOK),
    )
    return runner, runner.run([ids(p) for p in prompts])


@pytest.mark.slow
def test_aepo_branching_matches_the_sources_lockstep_loop_over_many_seeds():
    """archer's real decode loop against a transcription of AEPO's: branches per prompt, fresh
    rollouts and the branch rate agree within 4 standard errors over many seeds. The counter per
    decision (archer's earlier rule) resets after every "no", so it branches far more: the control."""

    prompts, p = ["1+1=", "2+2="], 0.9
    n, initial, max_turns, penalty = 8, 1, 4, 0.25  # a strong penalty makes the counting rule visible
    ref_branches, ref_fresh, ref_rate = aepo_source_stats([p, p], n, initial, max_turns, penalty)

    def sample(rule: str, seeds: int):
        s = BranchSettings(
            n=n,
            initial_rollouts=initial,
            beam_size=2,
            branch_probability=0.5,
            entropy_weight=0.0,
            mode="aepo",
            consecutive_penalty=penalty,
            consecutive_count=rule,
        )
        branches, fresh, decisions = [], [], []
        for seed in range(seeds):
            _, batch = aepo_run(prompts, dict.fromkeys(prompts, p), s, seed, max_turns)
            assert len(batch.trajectories) == n * len(prompts)
            branches.append(batch.stats["agent/branches"])
            fresh.append(batch.stats["agent/fresh_rollouts"])
            decisions += [d[2] for d in batch.decisions]
        return np.array(branches), float(np.mean(fresh)), float(np.mean(decisions)), len(decisions)

    branches, fresh, rate, k = sample("iteration", 24)
    se = max(branches.std(ddof=1), ref_branches.std()) / np.sqrt(len(branches))
    assert abs(branches.mean() - ref_branches.mean()) < 4 * se, (branches.mean(), ref_branches.mean(), se)
    assert abs(fresh - ref_fresh) < 4 * se  # n·G = branches + fresh + initial: the same spread
    assert abs(rate - ref_rate) < 4 * np.sqrt(ref_rate * (1 - ref_rate) / k), (rate, ref_rate)
    old, _, old_rate, _ = sample("decision", 12)
    assert old.mean() - ref_branches.mean() > 6 * se and old_rate > ref_rate + 0.1, (old.mean(), old_rate)


class EntropyScriptedDecoder(ScriptedDecoder):
    """Entropies that differ by segment: the decision after the prompt calls with probability
    `p_first`, after a tool result with `p_after`; an answer is '7' or '8' (probability `q`)."""

    def __init__(self, p_first: float, p_after: float, q: float):
        super().__init__({})
        self.p_first, self.p_after, self.q = p_first, p_after, q
        self.eight = TOK.convert_tokens_to_ids("8")

    def _logits(self, text: str) -> torch.Tensor:
        out = torch.full((self.V,), -30.0)
        if "=" not in text:
            return out
        _, _, tail = text.partition("=")
        since = tail.rsplit("</result>", 1)[-1]
        if since == "":
            p = self.p_first if tail == "" else self.p_after
            out[self.lt] = math.log(p)
            out[self.seven] = math.log((1 - p) * self.q)
            out[self.eight] = math.log((1 - p) * (1 - self.q))
        elif since in ("7", "8") or len(since) >= len(CALL):
            out[EOS] = 0.0
        else:
            out[self.call_ids[len(since)]] = 0.0
        return out


def segment_entropies(dec: EntropyScriptedDecoder, prompt: str, t, k: int, topk: int) -> list[float]:
    """Each segment's entropy recomputed from the trajectory's tokens: the truncated entropies of
    its first k generated tokens (tool results excluded), summed, / ln |V| (ARPO/AEPO's measure)."""
    from archer.core.agent.branching import token_entropies

    out, text, seg = [], prompt, []
    for tok, role in zip(t.tokens, t.roles):
        if role == ROLE_TOOL_RESULT:
            if seg:
                out.append(seg)
                seg = []
        else:
            seg.append(dec._logits(text))
        text += TOK.decode([tok], skip_special_tokens=True)
    if seg:
        out.append(seg)
    hs = []
    for logits in out:
        _, trunc = token_entropies(torch.stack(logits[:k]), 1.0, topk)
        hs.append(float(trunc.sum()) / math.log(len(TOK)))
    return hs


def test_aepo_dynamic_rollouts_use_a_root_sample_and_every_monitor_segment():
    """AEPO's code (vllm_rollout_with_tools.py:259-299, 382-402, 525-550): H_root is the entropy of
    a separate short sample from the prompt, H̄_tool the mean over *all* segments of one monitoring
    tool rollout (the first and the answer included); both are discarded and m initial rollouts
    start. With a one-call monitor ΔH = H_root − H̄_tool is no longer 0 by construction (archer's
    earlier rule used the monitor's own first segment and only its between-call segments)."""
    prompts = ["1+1=", "2+2=", "3+3="]
    s = BranchSettings(n=8, initial_rollouts=2, mode="aepo", dynamic_rollouts=True)
    one_call_deltas = []
    for seed in range(4):
        dec = EntropyScriptedDecoder(p_first=0.5, p_after=0.02, q=0.98)
        runner = AgentRollout(
            dec,
            TOK,
            InstantTools(),
            s,
            SamplingSettings(max_response_tokens=200, max_turns=3),
            eos_ids=[EOS],
            seed=seed,
            vocab_size=len(TOK),
        )
        batch = runner.run([ids(p) for p in prompts])
        assert all(t.origin in ("initial", "branch", "fresh") for t in batch.trajectories)  # probes dropped
        for g, prompt in enumerate(prompts):
            root, monitor = runner.probes[2 * g], runner.probes[2 * g + 1]
            h_root = segment_entropies(dec, prompt, root, s.entropy_tokens, s.entropy_topk)[0]
            h_tool = np.mean(segment_entropies(dec, prompt, monitor, s.entropy_tokens, s.entropy_topk))
            got_root, got_tool, m = runner.dynamic[g]
            assert got_root == pytest.approx(h_root, abs=1e-6) and got_tool == pytest.approx(h_tool, abs=1e-6)
            assert m == dynamic_global_rollouts(s.n, h_root, h_tool)
            assert sum(t.origin == "initial" and t.group == g for t in batch.trajectories) == m
            if monitor.turns == 1:
                one_call_deltas.append(got_root - got_tool)
    assert one_call_deltas and max(abs(d) for d in one_call_deltas) > 0.01


# ---------------------------------------------------------------------------------------- decoder
def tiny_model(seed=0):
    from omegaconf import OmegaConf

    from archer.core.models.tiny import build_tiny_qwen2

    cfg = OmegaConf.create(
        {
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "num_kv_heads": 1,
            "intermediate_size": 64,
            "max_position_embeddings": 128,
            "tie_word_embeddings": True,
        }
    )
    return build_tiny_qwen2(cfg, len(TOK), pad_token_id=0, eos_token_id=EOS, seed=seed).eval()


def test_decode_loop_with_holes_forks_and_fresh_rows_matches_a_full_forward():
    from archer.core.agent.decoder import HFDecoder

    model = tiny_model()
    dec = HFDecoder(model, pad_id=0)
    prompts = [ids("12+3="), ids("7*8="), ids("100-1=")]
    seqs = [list(p) for p in prompts]
    g = torch.Generator().manual_seed(0)
    last = dec.prefill(prompts)
    plan = [[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 0]]  # rows pause (holes) at different steps
    for real in plan:
        toks = torch.randint(4, 90, (dec.rows,), generator=g)
        mask = torch.tensor(real, dtype=torch.bool)
        last = torch.where(mask[:, None], dec.step(toks, mask), last)
        for i, r in enumerate(real):
            if r:
                seqs[i].append(int(toks[i]))
    dec.select(torch.tensor([0, 1, 2, 1]))  # fork row 1: its prefix is copied, not recomputed
    seqs.append(list(seqs[1]))
    last = last[torch.tensor([0, 1, 2, 1])]
    dec.add_empty(1)  # a fresh row: its prompt is fed token by token
    fresh = ids("5+5=")
    seqs.append([])
    last = torch.cat([last, torch.zeros(1, last.shape[1])])
    for step in range(len(fresh) + 2):
        toks = torch.randint(4, 90, (dec.rows,), generator=g)
        toks[-1] = fresh[step] if step < len(fresh) else toks[-1]
        real = torch.tensor([step % 2 == 0, True, False, True, True])
        out = dec.step(toks, real)
        last = torch.where(real[:, None], out, last)
        for i in range(dec.rows):
            if real[i]:
                seqs[i].append(int(toks[i]))
    for i, seq in enumerate(seqs):
        full = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        assert torch.allclose(last[i], full, atol=1e-4), i


# ---------------------------------------------------------------------------------------- masking
def agent_rollout_batch():
    s = BranchSettings(n=4, initial_rollouts=2, beam_size=2, branch_probability=1.0, entropy_weight=0.0)
    _, batch = scripted_run(["1+1=", "2+2="], {"1+1=": 0.95, "2+2=": 0.95}, s, seed=3)
    ro, roles = to_rollout(batch, [ids("1+1="), ids("2+2=")], pad_id=0)
    return batch, ro, roles


def test_tool_result_tokens_are_masked_from_the_loss_and_marked():
    batch, ro, roles = agent_rollout_batch()
    assert any((r == ROLE_TOOL_RESULT).any() for r in roles)
    for i, (t, r) in enumerate(zip(batch.trajectories, roles)):
        L = len(t.tokens)
        assert (
            ro.response_mask[i, :L].all() and not ro.response_mask[i, L:].any()
        )  # attention sees tool results
        expect = torch.from_numpy((r != ROLE_TOOL_RESULT).astype(np.int64))
        assert torch.equal(ro.loss_mask[i, :L], expect)

        def text_of(role, t=t, r=r):
            return "".join(TOK.decode([tok]) for tok, rr in zip(t.tokens, r) if rr == role)

        assert text_of(ROLE_TOOL_RESULT) == "<result>2</result>" * t.turns
        assert text_of(ROLE_TOOL_CALL) == CALL * t.turns
    finished = [t for t in batch.trajectories if t.finish == "eos"]
    assert finished and all(
        final_answer(TOK.decode(t.tokens, skip_special_tokens=True)) == "7" for t in finished
    )


def test_tool_result_tokens_contribute_no_gradient_in_the_ppo_update():
    from omegaconf import OmegaConf

    from archer.core.config.schema import ActorConfig
    from archer.core.engines.local.update import UpdateBatch, ppo_update

    _, ro, roles = agent_rollout_batch()
    adv = torch.zeros(ro.response_ids.shape)
    for i, r in enumerate(roles):  # advantage only on tool-result tokens
        adv[i, : len(r)] = torch.from_numpy((r == ROLE_TOOL_RESULT).astype(np.float32)) * (
            1.0 if i % 2 else -1.0
        )
    actor = OmegaConf.structured(ActorConfig)
    actor.ppo_mini_batch_size, actor.ppo_micro_batch_size = 2, 3

    def grad_norm(rollout):
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        metrics, _ = ppo_update(
            model,
            opt,
            None,
            UpdateBatch(rollout, None, adv),
            actor,
            group_size=4,
            temperature=1.0,
            device="cpu",
        )
        return metrics["actor/grad_norm"]

    assert grad_norm(ro) == 0.0
    import dataclasses

    assert grad_norm(dataclasses.replace(ro, loss_mask=None)) > 0  # the control: unmasked, they would train


# ---------------------------------------------------------------------------------------- AEPO loss
def test_aepo_clipping_keeps_the_gradient_of_clipped_positive_tokens():
    from archer.core.algorithms import PolicyLossConfig, get_policy_loss

    cfg = PolicyLossConfig(clip_ratio_low=0.2, clip_ratio_high=0.2)
    old = torch.zeros(1, 4)
    logp = torch.tensor([[0.5, 0.0, -0.5, 0.5]], requires_grad=True)  # ratios e^.5 (clipped), 1, e^-.5, e^.5
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    out = get_policy_loss("aepo")(old, logp, adv, mask, config=cfg)
    out.loss.backward()
    r = torch.exp(logp.detach())[0]
    values = [-1.2, -1.0, 0.8, float(r[3])]  # A>0 clipped to 1+ε; A<0 vanilla (max(r, 1-ε) below 1)
    assert out.loss.item() == pytest.approx(sum(values) / 4, abs=1e-6)
    g = logp.grad[0] * 4
    assert g[0].item() == pytest.approx(-1.2, abs=1e-6)  # vanilla PPO would give 0 here
    assert g[1].item() == pytest.approx(-1.0, abs=1e-6)
    assert g[2].item() == pytest.approx(0.0, abs=1e-6) and g[3].item() == pytest.approx(float(r[3]), abs=1e-5)
    vlogp = logp.detach().clone().requires_grad_(True)
    get_policy_loss("vanilla")(old, vlogp, adv, mask, config=cfg).loss.backward()
    assert vlogp.grad[0, 0].item() == 0.0


def test_entropy_aware_advantage_scales_by_z_scored_entropy_and_is_never_silently_off():
    from archer.core.algorithms import (
        PolicyLossConfig,
        entropy_aware_advantages,
        get_policy_loss,
        loss_needs_entropy,
    )

    adv = torch.tensor([[1.0, 1.0, 1.0, 5.0]])
    ent = torch.tensor([[0.0, 1.0, 2.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = entropy_aware_advantages(adv, ent, mask, 0.2)
    z = (torch.tensor([0.0, 1.0, 2.0]) - 1.0) / torch.tensor([0.0, 1.0, 2.0]).std(unbiased=False)
    assert torch.allclose(out[0, :3], 1 + 0.2 * z, atol=1e-5) and out[0, 3] == 5.0
    cfg = PolicyLossConfig(aepo_entropy_advantage=0.2)
    with pytest.raises(ValueError, match="entropy"):
        get_policy_loss("aepo")(torch.zeros(1, 4), torch.zeros(1, 4), adv, mask, config=cfg, entropy=None)
    assert loss_needs_entropy("aepo")


# ---------------------------------------------------------------------------------------- warm-up
def test_warmup_demonstrations_carry_no_loss_on_tool_results():
    from archer.core.agent.protocol import demonstration
    from archer.core.rollout.prompts import Prompt
    from archer.core.warmup import supervised_batch

    p = Prompt(ids=ids("315*570="), answer="179550", data_source="tool_arithmetic", index=0)
    _, spans = demonstration("python", "315*570", "179550", "179550")
    input_ids, _, labels = supervised_batch(TOK, [p], demos=[spans])
    trained = TOK.decode([int(t) for t, lab in zip(input_ids[0], labels[0]) if lab != -100])
    assert trained == "<python>315*570</python>179550<eos>"


# ---------------------------------------------------------------------------------------- end to end
TINY_AGENT = [
    "model.tiny.hidden_size=48",
    "model.tiny.num_layers=2",
    "model.tiny.intermediate_size=96",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1",
    "data.synth.task=tool_arithmetic",
    "data.synth.n=24",
    "data.synth.val_n=4",
    "data.train_batch_size=2",
    "actor.ppo_mini_batch_size=2",
    "rollout.n=4",
    "agent.initial_rollouts=2",
    "agent.branch_probability=1.0",
    "rollout.max_new_tokens=64",
    "warmup.steps=150",
    "warmup.target_accuracy=0",  # all 150 steps, as these tests were written for
    "warmup.batch_size=16",
    "warmup.lr=0.01",
    "warmup.label_noise=0.0",
    "trainer.num_threads=1",
    "rollout.val.max_prompts=4",
    "trainer.val_every=0",
]


def test_arpo_quickstart_style_run_writes_tool_turns_roles_and_branch_metrics(tmp_path):
    from archer.core.config import compose
    from archer.core.engines.local.trainer import LocalTrainer
    from archer.core.metrics import read_metrics
    from archer.core.trace import TraceReader

    out = tmp_path / "run"
    c = compose(
        "arpo-quickstart",
        [
            *TINY_AGENT,
            "trainer.total_steps=2",
            f"trainer.cache_dir={tmp_path / 'cache'}",
            "actor.policy_loss=aepo",
            "actor.aepo_entropy_advantage=0.2",
        ],
    )
    t = LocalTrainer(c, out)
    try:
        t.setup()
        t.fit()
    finally:
        t.close()
    rows = [r for r in read_metrics(out) if r["step"] > 0]
    assert len(rows) == 2
    for r in rows:
        assert r["agent/trajectories_per_prompt"] == 4
        assert r["agent/branches"] + r["agent/fresh_rollouts"] + 2 * 2 == 8
        for k in (
            "agent/branches",
            "agent/calls_python",
            "agent/turns_mean",
            "agent/tool_errors",
            "agent/tool_timeouts",
        ):
            assert k in r
    assert sum(r["agent/tool_calls"] for r in rows) > 0
    reader = TraceReader(out)
    assert reader.summary["agent"]["python_sandbox"]["isolation"] == "bwrap"
    roles, resp = [], []
    for step in (1, 2):
        table = reader.read_step(step)
        assert "token_role" in table.column_names
        roles += table.column("token_role").to_pylist()
        resp += table.column("response_ids").to_pylist()
    assert [len(x) for x in roles] == [len(x) for x in resp]
    tool_texts = [
        "".join(TOK.decode([t]) for t, r in zip(ids_, rr) if r == ROLE_TOOL_RESULT)
        for ids_, rr in zip(resp, roles)
    ]
    assert any(x.startswith("<result>") and x.endswith("</result>") for x in tool_texts)
    from archer.view.model import TraceData
    from archer.view.widgets.heatmap import TokenView

    tokens = TraceData(out).response(1, 0)  # the viewer reads the roles and dims tool results
    assert tokens.roles is not None and len(tokens.roles) == tokens.n
    view = TokenView()
    view.tokens = tokens
    view.model.set_tokens("k", [TOK.decode([t]) for t in tokens.ids], tokens.entropy, None, False)


def test_progress_line_reports_branches_and_tool_calls_only_in_agent_mode():
    from archer.cli.progress import format_step

    base = {"reward/mean": 0.5, "time/step": 1.0}
    line = format_step(3, 40, {**base, "agent/branches": 15.0, "agent/tool_calls": 62.0})
    assert "branches 15" in line and "tools 62" in line
    assert "branches" not in format_step(3, 40, base) and "tools" not in format_step(3, 40, base)


def test_influence_in_agent_mode_covers_every_token_of_the_traced_groups(tmp_path, monkeypatch):
    """influence.enable with tools: the selected groups get one finite score per response token,
    tool results included (they steer later tokens as context), and the accepted side is recorded."""
    import archer.core.rewards as rewards
    from archer.core.config import compose
    from archer.core.engines.local.trainer import LocalTrainer
    from archer.core.trace import TraceReader

    def alternating(
        name, responses, truths, **kw
    ):  # a contrast in every group, whatever the tiny model writes
        return [
            rewards.Score(reward=float(i % 2), correct=bool(i % 2), extracted=None)
            for i in range(len(responses))
        ]

    monkeypatch.setattr(rewards, "score_batch", alternating)
    out = tmp_path / "run"
    c = compose(
        "arpo-quickstart",
        [
            *TINY_AGENT,
            "trainer.total_steps=1",
            f"trainer.cache_dir={tmp_path / 'cache'}",
            "influence.enable=true",
        ],
    )
    t = LocalTrainer(c, out)
    try:
        t.setup()
        t.fit()
    finally:
        t.close()
    table = TraceReader(out).read_step(1).to_pylist()
    traced = [r for r in table if r["influence"] is not None]
    assert traced and {r["group_index"] for r in traced} == {r["group_index"] for r in table}
    saw_tool = False
    for r in traced:
        infl = np.array(r["influence"], dtype=np.float64)
        roles = np.array(r["token_role"])
        assert len(infl) == len(r["response_ids"]) == len(roles) and np.isfinite(infl).all()
        assert r["accepted"] == bool(r["correct"])
        assert math.isclose(r["influence_sum"], infl.sum(), rel_tol=1e-4, abs_tol=1e-6)
        saw_tool |= bool((roles == ROLE_TOOL_RESULT).any())
    assert saw_tool
