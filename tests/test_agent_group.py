"""The server-side agent loop (archer/core/agent/group.py, what archer's verl agent-loop worker runs
per prompt) against the local engine's batched loop, with the local tests' scripted decoder as
the "server"; and the top-k entropy estimator a server without full distributions needs."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest
import torch
from test_agent import (
    CALL,
    EOS,
    TOK,
    EntropyScriptedDecoder,
    ScriptedDecoder,
    aepo_run,
    aepo_source_stats,
    ids,
    scripted_run,
    segment_entropies,
)

from archer.core.agent import group as group_mod
from archer.core.agent import rollout as rollout_mod
from archer.core.agent.branching import (
    BranchSettings,
    dynamic_global_rollouts,
    token_entropies,
    topk_entropy,
)
from archer.core.agent.group import Generation, GroupRollout, Lockstep, ToolReply
from archer.core.agent.protocol import ROLE_MODEL, ROLE_TOOL_CALL, ROLE_TOOL_RESULT


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: thread wake-ups on a shared 2-core machine cost more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ScriptedServer:
    """A generation server over the scripted decoder's next-token distributions: it samples until
    EOS or `max_tokens` (past a closing tool tag too, as a server without stop strings does) and
    reports each token's log-prob and top-k truncated entropy, as archer's hf replica does."""

    def __init__(
        self, p_call: dict[str, float], seed: int, topk: int = 10, dec: ScriptedDecoder | None = None
    ):
        self.dec = dec or ScriptedDecoder(p_call)
        self.gen = torch.Generator().manual_seed(seed)
        self.topk = topk
        self.requests = 0

    async def generate(self, context: list[int], max_tokens: int) -> Generation:
        self.requests += 1
        text = "".join(self.dec.chars[t] for t in context)
        toks, lps, hs = [], [], []
        for _ in range(max_tokens):
            logits = self.dec._logits(text)
            logp = torch.log_softmax(logits, -1)
            tok = int(torch.multinomial(logp.exp(), 1, generator=self.gen))
            _, trunc = token_entropies(logits[None], 1.0, self.topk)
            toks.append(tok)
            lps.append(float(logp[tok]))
            hs.append(float(trunc[0]))
            if tok == EOS:
                break
            text += self.dec.chars[tok]
        await asyncio.sleep(0)  # a real server answers later: let the other trajectories run
        return Generation(toks, lps, hs)


async def instant_tool(tool: str, content: str) -> ToolReply:
    await asyncio.sleep(0)
    return ToolReply("2", "ok")


def make_group(
    server,
    s: BranchSettings,
    seed: int,
    max_turns: int,
    *,
    lockstep=None,
    tool=instant_tool,
    max_response=120,
):
    return GroupRollout(
        s,
        generate=server.generate,
        call_tool=tool,
        encode=ids,
        piece=lambda t: TOK.decode([t], skip_special_tokens=True),
        eos_ids=[EOS],
        tools=("python",),
        vocab_size=len(TOK),
        max_response_tokens=max_response,
        max_turns=max_turns,
        rng=random.Random(seed),
        lockstep=lockstep,
    )


def group_run(prompt: str, p_call: dict[str, float], s: BranchSettings, seed: int, max_turns: int = 3):
    runner = make_group(ScriptedServer(p_call, seed), s, seed, max_turns)
    return asyncio.run(runner.run(ids(prompt)))


HANG_S = 120  # a hang guard for the lock-step batches (they finish in well under a second)


def batch_run(
    prompts,
    p_call,
    s: BranchSettings,
    seed: int,
    max_turns: int = 3,
    *,
    dec=None,
    tools=None,
    max_response=120,
):
    """One step's groups as archer's verl worker runs them: concurrently, sharing one `Lockstep`
    when AEPO counts c per iteration. Returns (groups, results or exceptions, the Lockstep)."""
    lock = Lockstep(len(prompts)) if s.lockstep else None
    groups = [
        make_group(
            ScriptedServer(p_call, seed * 101 + g, dec=dec),
            s,
            seed * 101 + g,
            max_turns,
            lockstep=lock,
            tool=(tools or {}).get(g, instant_tool),
            max_response=max_response,
        )
        for g in range(len(prompts))
    ]

    async def main():
        runs = asyncio.gather(*(gr.run(ids(p)) for gr, p in zip(groups, prompts)), return_exceptions=True)
        return await asyncio.wait_for(runs, HANG_S)

    return groups, asyncio.run(main()), lock


# ------------------------------------------------------------------------------ the estimator
def test_topk_entropy_is_arpos_truncated_entropy_and_brackets_the_exact_one():
    """On Zipf-like distributions over a 32k vocabulary (a language model's shape): the top-k
    truncated entropy equals `token_entropies`' (the local engine's), is biased low by exactly the
    tail's share, and the tail bounds bracket the exact entropy. Printed: the measured bias."""
    V = 32_000
    gen = torch.Generator().manual_seed(0)
    for s_exp, k in [(1.1, 20), (1.5, 20), (2.0, 10), (1.1, 100)]:
        ranks = torch.arange(1, V + 1, dtype=torch.float64)
        logits = (-s_exp * ranks.log())[torch.randperm(V, generator=gen)]
        logp = torch.log_softmax(logits, -1)
        exact = float(-(logp.exp() * logp).sum())
        top = logp.topk(k).values.tolist()
        est = topk_entropy(top, V)
        _, trunc = token_entropies(logits.float()[None], 1.0, k)
        assert est.truncated == pytest.approx(float(trunc[0]), abs=1e-4)
        p = logp.exp()
        tail = p.sort(descending=True).values[k:]
        assert exact - est.truncated == pytest.approx(float(-(tail * tail.log()).sum()), rel=1e-6)
        assert est.lower - 1e-9 <= exact <= est.upper + 1e-9
        assert est.tail_mass == pytest.approx(float(tail.sum()), rel=1e-6)
        print(
            f"zipf s={s_exp} k={k}: exact {exact:.3f}, truncated {est.truncated:.3f} "
            f"(bias {est.truncated - exact:+.3f}), bounds [{est.lower:.3f}, {est.upper:.3f}]"
        )
    peaked = topk_entropy([math.log(1.0)], V)  # all mass in the top-1: exact, no tail
    assert peaked.truncated == peaked.lower == peaked.upper == 0.0


# ------------------------------------------------------------------------------ the group loop
def test_the_rule_is_one_code_path_for_both_loops():
    assert group_mod.branch_decision is rollout_mod.branch_decision
    assert group_mod.fork_budget is rollout_mod.fork_budget
    assert group_mod.entropy_delta is rollout_mod.entropy_delta
    assert group_mod.segment_entropy is rollout_mod.segment_entropy


def test_group_budget_is_never_exceeded_and_always_filled_and_branches_copy_their_parent():
    p_call = {"1+1=": 0.9, "2+2=": 0.5, "3+3=": 0.05}
    for seed in range(40):
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
            consecutive_count=str(rng.choice(["iteration", "decision"])),
            dynamic_rollouts=bool(rng.integers(0, 2)),
        )
        prompt = list(p_call)[seed % 3]
        res = group_run(prompt, p_call, s, seed)
        ts = res.trajectories
        assert len(ts) == n and [t.session for t in ts] == list(range(n)), (seed, s)
        initial = res.dynamic[2] if s.mode == "aepo" and s.dynamic_rollouts else s.initial_rollouts
        assert sum(t.origin == "initial" for t in ts) == initial
        for t in ts:
            assert t.finish in ("eos", "turns", "length")
            assert len(t.tokens) == len(t.roles) == len(t.log_probs) <= 120
            assert t.loss_mask == [0 if r == ROLE_TOOL_RESULT else 1 for r in t.roles]
            text = TOK.decode(t.tokens, skip_special_tokens=True)
            assert text.count(CALL) == len(t.calls) + (t.finish == "turns")
            if t.origin == "branch":
                parent = ts[t.parent]
                k = t.forked_at
                assert t.tokens[:k] == parent.tokens[:k] and t.roles[k - 1] == ROLE_TOOL_RESULT
        assert res.stats["agent/trajectories_per_prompt"] == n and res.stats["agent/budget_fill"] == 1.0


def test_roles_mark_the_call_the_result_and_the_answer():
    s = BranchSettings(n=1, initial_rollouts=1, mode="none")
    res = group_run("1+1=", {"1+1=": 1.0}, s, seed=0, max_turns=1)
    t = res.trajectories[0]
    text = "".join(TOK.decode([x], skip_special_tokens=True) for x in t.tokens)
    # one call and its result; the second call is past max_turns: its tokens stay (model-written,
    # trained, role tool call), no tool runs, and the trajectory ends there
    assert text.startswith(CALL + "<result>2</result>") and t.finish == "turns"
    roles = np.array(t.roles)
    n_call, n_res = len(CALL), len("<result>2</result>")
    assert (roles[:n_call] == ROLE_TOOL_CALL).all()
    assert (roles[n_call : n_call + n_res] == ROLE_TOOL_RESULT).all()
    assert (roles[n_call + n_res :] == ROLE_TOOL_CALL).all() and ROLE_MODEL not in roles[:n_call]
    assert t.calls == [("python", "ok")]


@pytest.mark.parametrize(
    "alpha,beta,refill",
    [(1.0, 0.0, "all"), (0.0, 0.0, "all"), (0.0, 0.0, "one")],
)
def test_deterministic_rules_give_the_local_engines_counts_exactly(alpha, beta, refill):
    """Always branch / never branch: both loops end with the same trajectories of each origin."""
    s = BranchSettings(
        n=8, initial_rollouts=3, beam_size=2, branch_probability=alpha, entropy_weight=beta, refill=refill
    )
    p_call = {"1+1=": 1.0}
    for seed in range(3):
        _, local = scripted_run(["1+1="], p_call, s, seed=seed, max_turns=2)
        res = group_run("1+1=", p_call, s, seed, max_turns=2)
        for key in ("agent/branches", "agent/fresh_rollouts", "agent/tool_calls", "agent/branch_decisions"):
            assert res.stats[key] == local.stats[key], (key, alpha, refill)
        for key in ("agent/segment_entropy_mean", "agent/segment_entropy_max"):
            assert res.stats[key] == pytest.approx(local.stats[key], rel=1e-5), (key, alpha, refill)


def test_branching_statistics_equal_the_local_engines_over_many_seeds():
    """ARPO at α = 0.5 with entropy-dependent ΔH (two tool calls, uncertain prompts): over many
    seeds the mean branches, fresh rollouts, decisions, tool calls, branch rate and segment entropy
    of the server loop and the local engine's batched loop agree within 4 standard errors."""
    s = BranchSettings(n=8, initial_rollouts=3, beam_size=2, branch_probability=0.5, entropy_weight=2.0)
    p_call = {"1+1=": 0.6, "2+2=": 0.8}
    keys = (
        "agent/branches",
        "agent/fresh_rollouts",
        "agent/branch_decisions",
        "agent/tool_calls",
        "agent/segment_entropy_mean",
    )
    local, server = {k: [] for k in keys}, {k: [] for k in keys}
    rates_l, rates_s = [], []
    seeds = 120
    for seed in range(seeds):
        prompt = list(p_call)[seed % 2]
        _, lb = scripted_run([prompt], p_call, s, seed=seed, max_turns=3)
        gr = group_run(prompt, p_call, s, seed + 10_000, max_turns=3)
        for k in keys:
            local[k].append(lb.stats[k])
            server[k].append(gr.stats[k])
        rates_l += [d[2] for d in lb.decisions]
        rates_s += [d[1] for t in gr.trajectories for d in t.decisions]
    for k in keys:
        a, b = np.array(local[k]), np.array(server[k])
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) + 1e-9
        assert abs(a.mean() - b.mean()) <= 4 * se, (k, a.mean(), b.mean(), se)
    a, b = np.array(rates_l, float), np.array(rates_s, float)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) <= 4 * se
    assert 0.05 < b.mean() < 0.95  # the rule was exercised both ways
    assert np.mean(server["agent/segment_entropy_mean"]) > 1e-3  # entropies were there to compare


# ------------------------------------------------------------------------------ AEPO on the server loop
def aepo_settings(**kw) -> BranchSettings:
    base = dict(n=8, initial_rollouts=1, beam_size=2, branch_probability=0.5, entropy_weight=0.0, mode="aepo")
    return BranchSettings(**{**base, **kw})


@pytest.mark.parametrize("alpha,refill", [(0.0, "one"), (0.0, "all"), (1.0, "one"), (1.0, "all")])
def test_aepo_lockstep_counts_equal_the_local_engines_exactly_when_the_rule_is_deterministic(alpha, refill):
    """Every row calls its tool (p = 1) and AEPO always (α = 0) or never (α = 1, β = 0) branches:
    the batch of server groups sharing a `Lockstep` and the local engine's lock-step loop end with
    the same branches, fresh rollouts, decisions, tool calls and lock-step iterations."""
    prompts, p_call = ["1+1=", "2+2="], {"1+1=": 1.0, "2+2=": 1.0}
    s = aepo_settings(
        n=6, initial_rollouts=2, branch_probability=alpha, refill=refill, consecutive_penalty=0.3
    )
    keys = ("agent/branches", "agent/fresh_rollouts", "agent/branch_decisions", "agent/tool_calls")
    for seed in range(2):
        _, local = aepo_run(prompts, p_call, s, seed, max_turns=2)
        groups, results, lock = batch_run(prompts, p_call, s, seed, max_turns=2)
        for k in keys:
            assert sum(r.stats[k] for r in results) == local.stats[k], (k, alpha, refill)
        assert lock.iterations == local.stats["agent/iterations"] and lock.iterations > 1
        assert all(r.stats["agent/iterations"] == lock.iterations for r in results)
        assert all(len(r.trajectories) == s.n for r in results)


@pytest.mark.slow
def test_aepo_lockstep_on_the_server_loop_matches_the_sources_loop_over_many_seeds():
    """The server groups of one batch sharing a `Lockstep` against the transcription of AEPO's
    lock-step loop (test_agent.aepo_source_loop, the local engine's reference too): branches, fresh
    rollouts and the branch rate agree within 4 standard errors; counting c per decision (the
    control) branches far more. The counter c each decision read is recorded, and reaches > 1."""
    prompts, p = ["1+1=", "2+2="], 0.9
    n, initial, max_turns, penalty = 8, 1, 4, 0.25
    ref_branches, ref_fresh, ref_rate = aepo_source_stats([p, p], n, initial, max_turns, penalty)

    def sample(rule: str, seeds: int):
        s = aepo_settings(n=n, initial_rollouts=initial, consecutive_penalty=penalty, consecutive_count=rule)
        branches, fresh, decisions, cs = [], [], [], []
        for seed in range(seeds):
            _, results, _ = batch_run(
                prompts, dict.fromkeys(prompts, p), s, seed, max_turns, max_response=400
            )
            assert all(len(r.trajectories) == n for r in results), results
            branches.append(sum(r.stats["agent/branches"] for r in results))
            fresh.append(sum(r.stats["agent/fresh_rollouts"] for r in results))
            ds = [d for r in results for t in r.trajectories for d in t.decisions]
            decisions += [d[1] for d in ds]
            cs += [d[2] for d in ds]
        return np.array(branches), float(np.mean(fresh)), float(np.mean(decisions)), len(decisions), cs

    branches, fresh, rate, k, cs = sample("iteration", 24)
    se = max(branches.std(ddof=1), ref_branches.std()) / np.sqrt(len(branches))
    print(
        f"source loop: {ref_branches.mean():.2f} branches/step, rate {ref_rate:.3f}; server loop: "
        f"{branches.mean():.2f} ± {branches.std(ddof=1) / np.sqrt(len(branches)):.2f}, rate {rate:.3f}"
    )
    assert abs(branches.mean() - ref_branches.mean()) < 4 * se, (branches.mean(), ref_branches.mean(), se)
    assert abs(fresh - ref_fresh) < 4 * se
    assert abs(rate - ref_rate) < 4 * np.sqrt(ref_rate * (1 - ref_rate) / k), (rate, ref_rate)
    assert max(cs) > 1
    old, _, old_rate, _, _ = sample("decision", 12)
    print(f"per-decision counter: {old.mean():.2f} branches/step, rate {old_rate:.3f}")
    assert old.mean() - ref_branches.mean() > 6 * se and old_rate > ref_rate + 0.1, (old.mean(), old_rate)


def test_aepo_dynamic_rollouts_on_the_server_loop_use_the_local_engines_probes():
    """Each group's dynamic phase (a root sample of entropy_tokens tokens and one monitoring tool
    rollout, both discarded) gives H_root = its first segment's entropy and H̄_tool = the mean over
    every monitor segment, recomputed here from the tokens; m = dynamic_global_rollouts(n, ...) initial
    rollouts start (not agent.initial_rollouts), and the group still ends with exactly n."""
    prompts = ["1+1=", "2+2=", "3+3="]
    s = aepo_settings(n=8, initial_rollouts=2, dynamic_rollouts=True)
    counts = set()
    for seed in range(4):
        dec = EntropyScriptedDecoder(p_first=0.5, p_after=0.02, q=0.98)
        groups, results, lock = batch_run(prompts, {}, s, seed, dec=dec, max_response=200)
        assert lock is not None
        for prompt, g, r in zip(prompts, groups, results):
            root, monitor = g.probes
            assert root.origin == "root" and monitor.origin == "monitor" and not monitor.decisions
            assert root not in r.trajectories and monitor not in r.trajectories
            h_root = segment_entropies(dec, prompt, root, s.entropy_tokens, s.entropy_topk)[0]
            h_tool = np.mean(segment_entropies(dec, prompt, monitor, s.entropy_tokens, s.entropy_topk))
            got_root, got_tool, m = r.dynamic
            assert got_root == pytest.approx(h_root, abs=1e-6) and got_tool == pytest.approx(h_tool, abs=1e-6)
            assert m == dynamic_global_rollouts(s.n, h_root, h_tool)
            assert sum(t.origin == "initial" for t in r.trajectories) == m and len(r.trajectories) == s.n
            assert r.stats["agent/h_root_mean"] == got_root and r.stats["agent/h_tool_mean"] == got_tool
            counts.add(m)
    assert s.initial_rollouts not in counts, counts  # the dynamic phase set the count, not the setting


def test_a_failed_group_does_not_hold_back_the_others_of_a_lockstep_batch():
    """One group's tool raises: that group fails (its exception comes back), the others of the
    batch still finish their iterations and fill their budgets (no group waits for a dead one)."""

    async def broken_tool(tool: str, content: str) -> ToolReply:
        await asyncio.sleep(0)
        raise RuntimeError("the tool's worker died")

    prompts, p_call = ["1+1=", "2+2=", "3+3="], {"1+1=": 0.9, "2+2=": 0.9, "3+3=": 0.9}
    s = aepo_settings(n=4, initial_rollouts=2)
    for seed in range(3):
        _, results, lock = batch_run(prompts, p_call, s, seed, tools={1: broken_tool})
        assert isinstance(results[1], RuntimeError) and "died" in str(results[1])
        for r in (results[0], results[2]):
            assert len(r.trajectories) == s.n and all(
                t.finish in ("eos", "turns", "length") for t in r.trajectories
            )
    assert lock.members[1].failed
