"""`archer influence check` (issue 19, item 3): token sets, statistics, the replay of a traced step,
and the planted-token task — one token decides correctness; influence must rank it first and the
counterfactual must confirm that removing it costs the most margin."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from small_run import SMALL_INFLUENCE_PRESET

from archer.influence.counterfactual import (
    GroupTokens,
    TokenSet,
    bootstrap_ci,
    group_margin,
    rankdata,
    set_size,
    spearman,
    summarize,
    token_sets,
)

# ----------------------------------------------------------------------------- pure parts


def test_rankdata_and_spearman_handle_ties_and_constants():
    assert rankdata(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    a = torch.arange(10, dtype=torch.float64)
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, torch.ones(10)))
    assert math.isnan(spearman(a[:2], a[:2]))
    lo, hi = bootstrap_ci(a, a + 0.01 * torch.randn(10, generator=torch.Generator().manual_seed(0)), reps=200)
    assert 0.5 < lo <= hi <= 1.0


def test_token_sets_pick_by_contribution_entropy_and_chance():
    # contribution e = sign(A)·score: the rejected token with a very negative score is pushed down
    # by the update, which helps the margin, so it ranks high
    g = GroupTokens(
        group=0,
        rows=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]),
        positions=torch.tensor([0, 1] * 5),
        score=torch.tensor([5.0, 0.1, 0.2, -0.3, -6.0, 0.0, 1.0, 2.0, -1.0, 0.5], dtype=torch.float64),
        advantage_sign=torch.tensor([1.0, 1, 1, 1, -1, -1, 1, 1, -1, -1], dtype=torch.float64),
        entropy=torch.arange(10, dtype=torch.float64),
    )
    assert set_size(10, 20) == 2 and set_size(3, 1) == 1 and set_size(4, 100) == 4
    sets = token_sets(g, q=20, draws=3, generator=torch.Generator().manual_seed(0))
    kinds = {(s.kind, s.draw): s for s in sets}
    assert sorted(kinds["top_influence", 0].index.tolist()) == [0, 4]  # e = 5 and +6
    assert kinds["top_influence", 0].predicted == pytest.approx(11.0)
    assert sorted(kinds["bottom_influence", 0].index.tolist()) == [3, 9]  # e = -0.3 and -1·0.5
    assert sorted(kinds["top_entropy", 0].index.tolist()) == [8, 9]
    assert [s.kind for s in sets].count("random") == 3
    assert all(s.index.numel() == 2 for s in sets)
    with pytest.raises(ValueError):
        set_size(10, 0)


def test_summarize_orders_kinds_and_counts_top_wins():
    sets = []
    for grp in range(3):
        for kind, pred, meas in [
            ("top_influence", 3.0, 2.0 + grp),
            ("bottom_influence", -2.0, -1.0),
            ("top_entropy", 0.5, 0.4),
            ("random", 0.1, 0.2),
            ("random", 0.2, 0.1),
        ]:
            sets.append(TokenSet(grp, kind, 0, torch.tensor([0]), pred, meas))
    a = summarize(sets, {0: 4.0, 1: 4.0, 2: 0.0}, reps=100)
    assert a.order == ["top_influence", "top_entropy", "random", "bottom_influence"]
    assert a.top_costs_most == 1.0
    assert a.sets == 15 and a.spearman > 0.8 and a.ci_low <= a.spearman <= a.ci_high
    top = next(k for k in a.kinds if k.kind == "top_influence")
    assert top.measured == pytest.approx(3.0)
    assert top.measured_relative == pytest.approx((2 / 4 + 3 / 4) / 2)  # the group with no gain is left out


def test_group_margin_sum_and_mean():
    lp = torch.tensor([-1.0, -2.0, -4.0])
    assert group_margin(lp, [True, True, False]) == pytest.approx(1.0)
    assert group_margin(lp, [True, True, False], "mean") == pytest.approx(2.5)


# ----------------------------------------------------------------------------- the planted task

VOCAB, X, Y = 24, 7, 8  # X: the token that makes a response correct; Y: the wrong one
PROMPTS = ([3, 4, 5], [5, 9, 10, 11])
PLANTED = 3  # position of X / Y in the response


def _tiny(seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).float().train()


def _rollout(n: int, pad: int = 0):
    """Per prompt, n responses [12, 13, 14, X|Y]: the first half end in X (correct), the rest in Y
    (the deciding token is the answer at the end, so no later token sees which one was chosen)."""
    from archer.core.rollout.batch import Rollout, left_pad, right_pad

    prompts, responses, correct = [], [], []
    for p in PROMPTS:
        for s in range(n):
            ok = s < n // 2
            prompts.append(p)
            responses.append(torch.tensor([12, 13, 14, X if ok else Y]))
            correct.append(ok)
    pid, pm = left_pad(prompts, pad)
    rid = right_pad(responses, pad)
    ro = Rollout(
        prompt_ids=pid,
        prompt_mask=pm,
        response_ids=rid,
        response_mask=torch.ones_like(rid),
        truncated=torch.zeros(len(responses), dtype=torch.bool),
        group=[i // n for i in range(len(responses))],
        sample=[i % n for i in range(len(responses))],
    )
    return ro, correct


def planted_run(tmp_path: Path, *, n: int = 8) -> Path:
    """A run directory as `archer train` with influence.check_every would leave it after one
    traced step of the planted task: config.yaml, the pre-update snapshot, and the trace."""
    from archer.core.algorithms import get_adv_estimator
    from archer.core.config.compose import compose
    from archer.core.engines.local import checkpoint as ckpt
    from archer.core.engines.local.influence_step import LocalInfluence
    from archer.core.engines.local.trainer import StepBatch
    from archer.core.engines.local.update import UpdateBatch, ppo_update
    from archer.core.rollout.record import open_trace, trace_summary
    from archer.core.run import write_run_files

    run = tmp_path / "run"
    composed = compose(
        SMALL_INFLUENCE_PRESET,  # rollout.temperature 1.0, as the update below (the replay reads it)
        [
            f"rollout.n={n}",
            f"data.train_batch_size={len(PROMPTS)}",
            f"actor.ppo_mini_batch_size={len(PROMPTS)}",
            "actor.ppo_micro_batch_size=64",
            "actor.optim.lr=1e-3",
            "influence.projection=identity",
            "influence.check_every=1",
        ],
    )
    cfg = composed.cfg
    write_run_files(run, composed)
    model = _tiny(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    ro, correct = _rollout(n)
    rewards = torch.tensor([float(c) for c in correct])
    last = ro.response_lengths - 1
    token_rewards = torch.zeros(ro.response_ids.shape)
    token_rewards[torch.arange(ro.size), last] = rewards
    sb = StepBatch(
        ro,
        [SimpleNamespace(index=i, data_source="planted") for i in range(len(PROMPTS))],
        rewards,
        correct,
        [""] * ro.size,
    )
    adv, _ = get_adv_estimator("grpo")(token_rewards, ro.response_mask.float(), sb.uids())
    # a few earlier updates on shuffled responses give AdamW the running moments of mid-training
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        ppo_update(
            model,
            opt,
            None,
            UpdateBatch(rollout=ro, old_log_prob=None, advantages=adv[torch.randperm(ro.size, generator=g)]),
            cfg.actor,
            group_size=n,
            temperature=1.0,
            device="cpu",
        )
    ckpt.save_update_snapshot(run, 1, model=model, optimizer=opt)
    infl = LocalInfluence(model, cfg.influence)
    infl.begin(ro, rewards, torch.from_numpy(sb.sequence_advantages(adv)), sb.uids(), correct=correct)
    _, entropy = ppo_update(
        model,
        opt,
        None,
        UpdateBatch(rollout=ro, old_log_prob=None, advantages=adv),
        cfg.actor,
        group_size=n,
        temperature=1.0,
        device="cpu",
        micro_hook=infl.micro_hook,
    )
    accepted = infl.accepted
    rows, _ = infl.finish()
    infl.tracer.close()
    settings = dataclasses.asdict(infl.settings)
    summary = trace_summary(
        engine="local",
        preset="planted",
        run_dir=run,
        model_path=None,
        rollout_n=n,
        influence=settings,
    )
    trace = open_trace(cfg.trace, run, summary, resume_after_step=None)
    trace.submit(1, sb.record(entropy, adv, rows, accepted).table(1))
    trace.close()
    return run


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from archer.core.engines.local.influence_check import CheckOptions, check_step, read_step

    run = planted_run(tmp_path_factory.mktemp("planted"))
    data = read_step(run, 1, pad_id=0)
    result = check_step(run, 1, CheckOptions(q=25, draws=4, bootstrap=200))
    return run, data, result


def test_influence_ranks_the_planted_token_first(planted):
    _, data, _ = planted
    assert len(data.groups) == 2
    for gt in data.groups:
        planted_pos = gt.positions == PLANTED
        acc = gt.advantage_sign > 0
        # among the correct responses' tokens, X has the highest score, in every response
        for r in gt.rows[acc].unique().tolist():
            mine = gt.rows == r
            assert int(gt.positions[mine][gt.score[mine].argmax()]) == PLANTED
        # over the whole group, the tokens with the largest predicted contribution are the planted
        # ones (X pulled up in the correct responses, Y pushed down in the wrong ones)
        k = int(planted_pos.sum())
        top = torch.sort(gt.contribution, descending=True, stable=True).indices[:k]
        assert planted_pos[top].all()
        assert (gt.score[planted_pos & ~acc] < 0).all()  # reinforcing Y would pull toward the wrong side


def test_counterfactual_confirms_removing_the_planted_token_costs_the_most(planted):
    _, _, r = planted
    assert r.replay_entropy_err < 1e-3  # the replay reproduces the traced update
    assert r.groups == 2 and r.sets == 2 * (3 + 4)
    assert r.order[0] == "top_influence"
    assert r.top_costs_most == 1.0
    kinds = {k["kind"]: k for k in r.kinds}
    assert kinds["top_influence"]["measured"] > 0
    assert (
        kinds["top_influence"]["measured"]
        > kinds["random"]["measured"]
        > kinds["bottom_influence"]["measured"]
    )
    assert all(v > 0 for v in r.full_gain.values())  # the full update widens the margin
    assert r.spearman > 0.5


def test_cli_check_prints_the_agreement_and_writes_the_results(planted, monkeypatch):
    from typer.testing import CliRunner

    from archer.cli.main import app
    from archer.core.collect.table import build_table
    from archer.core.influence_results import read_results

    run, _, _ = planted
    monkeypatch.setenv("COLUMNS", "200")
    res = CliRunner().invoke(app, ["influence", "check", str(run), "--q", "25", "--draws", "2"])
    assert res.exit_code == 0, res.output
    assert "step 1: Spearman(predicted, measured)" in res.output
    assert "top q% by influence" in res.output and "random q%" in res.output
    saved = read_results(run)
    assert list(saved) == [1] and saved[1]["sets"] == 2 * (3 + 2)
    js = CliRunner().invoke(app, ["influence", "check", str(run), "--q", "25", "--draws", "2", "--json"])
    assert js.exit_code == 0
    data = json.loads(js.stdout)
    assert data[0]["step"] == 1 and len(data[0]["set_rows"]) == 10
    t = build_table([run])
    assert t.rows[0]["check_rho"] == pytest.approx(saved[1]["spearman"])
    assert t.rows[0]["check_steps"] == 1


def test_cli_check_without_a_saved_state_exits_2_with_the_fix(planted, tmp_path):
    from typer.testing import CliRunner

    from archer.cli.main import app
    from archer.core.engines.local import checkpoint as ckpt

    run = tmp_path / "copy"
    shutil.copytree(planted[0], run)
    shutil.rmtree(ckpt.snapshot_dir(run, 1))
    res = CliRunner().invoke(app, ["influence", "check", str(run)])
    assert res.exit_code == 2
    assert "influence.check_every" in res.output
    res = CliRunner().invoke(app, ["influence", "check", str(run), "--q", "0"])
    assert res.exit_code == 2 and "--q" in res.output


def test_rescoring_in_the_replay_reproduces_the_trace_and_other_knobs_differ(planted):
    """--set: the step's scores recomputed inside the replayed update with the run's own knobs
    match the trace's; other knobs give other predictions for the same sets' kinds."""
    from archer.core.engines.local.influence_check import CheckOptions, check_step

    run, _, traced = planted
    opts = dict(q=25, draws=1, bootstrap=50)
    same = check_step(run, 1, CheckOptions(**opts, rescore={"projection": "identity"}))
    other = check_step(run, 1, CheckOptions(**opts, rescore={"hessian_mode": "identity"}))

    def top(r):
        return [x["predicted"] for x in r.set_rows if x["kind"] == "top_influence"]

    assert top(same) == pytest.approx(top(traced), rel=1e-3)
    assert top(other) != pytest.approx(top(traced), rel=1e-2)
    assert other.order[0] == "top_influence"  # the planted token still comes first


def test_cli_rejects_a_bad_override(planted):
    from typer.testing import CliRunner

    from archer.cli.main import app

    res = CliRunner().invoke(app, ["influence", "check", str(planted[0]), "--set", "damping"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    res = CliRunner().invoke(app, ["influence", "check", str(planted[0]), "--set", "dampin=rank"])
    assert res.exit_code == 2 and "dampin" in res.output
