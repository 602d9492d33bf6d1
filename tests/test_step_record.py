"""One step -> trace path for every engine (archer/core/rollout/record.py): the same rollout through
the local engine's step code and the verl driver's step code gives the same trace table, column by
column; the stored per-response advantage is the mean over the tokens that receive gradient, so in
agent mode tool-result tokens do not dilute it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from archer.core.engines.local.trainer import StepBatch
from archer.core.engines.verl.steps import step_record
from archer.core.rollout.batch import Rollout, left_pad, right_pad
from archer.core.rollout.prompts import Prompt
from archer.core.trace.schema import ROLE_MODEL, ROLE_TOOL_RESULT

PAD = 0


def make_step(loss_mask: torch.Tensor | None = None) -> tuple[StepBatch, torch.Tensor, torch.Tensor]:
    """Two prompts x 2 samples with responses of different lengths, their entropy and advantages."""
    prompts = [Prompt([5, 6, 7], "1", "arith", 10), Prompt([8, 9], "2", "arith", 11)]
    responses = [[20, 21, 1], [22, 1], [23, 24, 25, 26], [1]]  # row 2 hits the 4-token limit
    pids, pmask = left_pad([prompts[g].ids for g in (0, 0, 1, 1)], PAD)
    rids = right_pad([torch.tensor(r) for r in responses], PAD)
    rmask = (torch.arange(rids.shape[1])[None] < torch.tensor([len(r) for r in responses])[:, None]).long()
    ro = Rollout(
        pids, pmask, rids, rmask, torch.tensor([False, False, True, False]), [0, 0, 1, 1], [0, 1, 0, 1]
    )
    ro.loss_mask = loss_mask
    gen = torch.Generator().manual_seed(0)
    entropy = torch.rand(rids.shape, generator=gen) * rmask
    seq_adv = torch.tensor([0.5, -0.5, 1.0, -1.0])
    advantages = seq_adv[:, None] * ro.train_mask  # GRPO: the response's advantage on every trained token
    batch = StepBatch(
        ro, prompts, torch.tensor([1.0, 0.0, 1.0, 0.0]), [True, False, True, False], ["1", "0", "2", "x"]
    )
    return batch, entropy, advantages


def test_local_and_verl_step_code_write_the_same_table():
    batch, entropy, advantages = make_step()
    influence = [np.array([0.1, -0.2, 0.3], np.float32), None, np.array([1, 2, 3, 4], np.float32), None]
    local = batch.record(entropy, advantages, influence=influence, accepted=[True, False, True, False]).table(
        3
    )

    # the same rows as verl's driver reads them from TransferQueue: keyed "{uid}_{session}_{index}",
    # in a shuffled (balanced) order, one padding row appended
    ro, lengths = batch.rollout, batch.rollout.response_lengths.tolist()
    uids = batch.uids()
    rows = [2, 0, 3, 1]
    keys = [f"{uids[i]}_{ro.sample[i]}_0" for i in rows] + ["pad_0_0"]
    trimmed = lambda t: [t[i, : lengths[i]] for i in rows] + [t[0, :1]]  # noqa: E731
    data = {
        "prompts": [ro.prompt_ids[i][ro.prompt_mask[i].bool()] for i in rows] + [ro.prompt_ids[0]],
        "responses": trimmed(ro.response_ids),
        "response_mask": trimmed(ro.train_mask),
        "entropy": trimmed(entropy),
        "advantages": trimmed(advantages),
        "rm_scores": [
            torch.zeros(lengths[i]).index_fill_(0, torch.tensor([lengths[i] - 1]), float(batch.rewards[i]))
            for i in rows
        ]
        + [torch.zeros(1)],
        "data_source": ["arith"] * 5,
        "extra_fields": [{"reward_extra_info": {"acc": float(batch.correct[i])}} for i in rows] + [{}],
    }
    padding = np.array([False] * 4 + [True])
    verl = step_record(
        keys,
        padding,
        data,
        max_response_length=4,
        influence={k: influence[i] for k, i in enumerate(rows) if influence[i] is not None},
        accepted=[[True, False, True, False][i] for i in rows] + [None],
    ).table(3)

    assert local.column_names == verl.column_names
    for name in local.column_names:
        if name == "group_index":  # the local engine numbers groups in batch order, verl by first uid seen
            continue
        assert local.column(name).to_pylist() == verl.column(name).to_pylist() or np.allclose(
            np.asarray(local.column(name).to_pylist(), dtype=object).astype(float),
            np.asarray(verl.column(name).to_pylist(), dtype=object).astype(float),
        ), name


def test_agent_mode_advantage_is_the_mean_over_trained_tokens_only():
    # response 0: tokens 0-1 model, token 2 a tool result (attended to, not trained)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 1], [1, 0, 0, 0]])
    batch, entropy, advantages = make_step(loss_mask=mask)
    batch.token_role = [
        np.array([ROLE_MODEL, ROLE_MODEL, ROLE_TOOL_RESULT], np.int8),
        np.array([ROLE_MODEL, ROLE_MODEL], np.int8),
        np.array([ROLE_MODEL, ROLE_TOOL_RESULT, ROLE_MODEL, ROLE_MODEL], np.int8),
        np.array([ROLE_MODEL], np.int8),
    ]
    table = batch.record(entropy, advantages).table(1)
    assert np.allclose(table.column("advantage").to_numpy(), [0.5, -0.5, 1.0, -1.0])  # not diluted
    assert isinstance(table, pa.Table)


def test_agent_rows_give_the_same_token_roles_and_metrics_on_both_engines():
    """verl's agent rows carry their roles and decisions in extra_fields["archer_agent"]; the driver's
    table has the local engine's token_role column, and its agent metrics are the shared stats."""
    from archer.core.agent.stats import rollout_stats
    from archer.core.engines.verl.steps import agent_metrics

    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 1], [1, 0, 0, 0]])
    batch, entropy, advantages = make_step(loss_mask=mask)
    roles = [
        np.array([ROLE_MODEL, ROLE_MODEL, ROLE_TOOL_RESULT], np.int8),
        np.array([ROLE_MODEL, ROLE_MODEL], np.int8),
        np.array([ROLE_MODEL, ROLE_TOOL_RESULT, ROLE_MODEL, ROLE_MODEL], np.int8),
        np.array([ROLE_MODEL], np.int8),
    ]
    batch.token_role = roles
    local = batch.record(entropy, advantages).table(2)
    ro, lengths = batch.rollout, batch.rollout.response_lengths.tolist()
    uids = batch.uids()
    origins = ["initial", "branch", "initial", "fresh"]
    calls = [[["python", "ok"]], [["python", "ok"]], [["search", "error"]], []]
    decisions = [[[0.0, True]], [], [[0.1, False]], []]
    keys = [f"{uids[i]}_{ro.sample[i]}_0" for i in range(4)]
    trimmed = lambda t: [t[i, : lengths[i]] for i in range(4)]  # noqa: E731
    seg_hs = [[0.2, 0.3], [0.5], [0.1, 0.0], [0.4]]
    summaries = [
        {
            "origin": origins[i],
            "calls": calls[i],
            "decisions": decisions[i],
            "roles": roles[i].tolist(),
            "segment_entropy": seg_hs[i],
        }
        for i in range(4)
    ]
    data = {
        "prompts": [ro.prompt_ids[i][ro.prompt_mask[i].bool()] for i in range(4)],
        "responses": trimmed(ro.response_ids),
        "response_mask": trimmed(ro.train_mask),
        "entropy": trimmed(entropy),
        "advantages": trimmed(advantages),
        "rm_scores": [
            torch.zeros(lengths[i]).index_fill_(0, torch.tensor([lengths[i] - 1]), float(batch.rewards[i]))
            for i in range(4)
        ],
        "data_source": ["arith"] * 4,
        "extra_fields": [
            {"reward_extra_info": {"acc": float(batch.correct[i])}, "archer_agent": summaries[i]}
            for i in range(4)
        ],
    }
    verl = step_record(keys, np.zeros(4, bool), data, max_response_length=4).table(2)
    assert verl.column("token_role").to_pylist() == local.column("token_role").to_pylist()
    assert verl.column("token_role").to_pylist()[2] == [ROLE_MODEL, ROLE_TOOL_RESULT, ROLE_MODEL, ROLE_MODEL]
    # influence of a selected group (rows 2, 3 here): one finite score per response token, tool
    # results included (the worker's capture; test_verl_engine checks the scores), None elsewhere
    scores = {2: np.array([0.5, -0.1, 0.2, 0.3], np.float32), 3: np.array([-0.4], np.float32)}
    traced = step_record(
        keys,
        np.zeros(4, bool),
        data,
        max_response_length=4,
        influence=scores,
        accepted=[None, None, True, False],
    ).table(2)
    infl = traced.column("influence").to_pylist()
    assert infl[0] is None and infl[1] is None
    # stored as float16 on the step's power-of-two scale (trace codec): relative error <= 2^-11
    assert infl[2] == pytest.approx([0.5, -0.1, 0.2, 0.3], rel=2**-11) and infl[3] == pytest.approx(
        [-0.4], rel=2**-11
    )
    assert len(infl[2]) == len(traced.column("token_role").to_pylist()[2])

    m = agent_metrics(keys, np.zeros(4, bool), summaries, n=2)
    ref = rollout_stats(
        origins,
        [[tuple(c) for c in cs] for cs in calls],
        [(0.0, True), (0.1, False)],
        prompts=2,
        n=2,
        segment_entropies=[h for hs in seg_hs for h in hs],
    )
    assert m == ref
    assert m["agent/segment_entropy_mean"] == pytest.approx(0.25) and m["agent/segment_entropy_max"] == 0.5
    assert m["agent/branches"] == 1 and m["agent/fresh_rollouts"] == 1 and m["agent/tool_calls"] == 3
    assert m["agent/tool_errors"] == 1 and m["agent/branch_rate"] == 0.5 and m["agent/budget_fill"] == 1.0


def test_aepo_rows_on_verl_report_dynamic_rollout_counts_iterations_and_the_counter():
    """AEPO's rows carry their group's (H_root, H̄_tool, m), the lock-step iteration count and the c
    each decision read: the step's metrics give the per-prompt means, m's range, and c's maximum."""
    from archer.core.engines.verl.steps import agent_metrics

    def row(origin, dynamic, decisions, iterations):
        return {
            "origin": origin,
            "calls": [],
            "decisions": decisions,
            "dynamic": dynamic,
            "iterations": iterations,
        }

    summaries = [
        row("initial", [0.4, 0.2, 3], [[0.1, True, 0]], 4.0),
        row("branch", [0.4, 0.2, 3], [[0.0, False, 2]], 4.0),
        row("initial", [0.1, 0.3, 1], [], 5.0),
        row("fresh", [0.1, 0.3, 1], [], 5.0),
    ]
    keys = ["a_0_0", "a_1_0", "b_0_0", "b_1_0"]
    m = agent_metrics(keys, np.zeros(4, bool), summaries, n=2)
    assert m["agent/h_root_mean"] == pytest.approx(0.25) and m["agent/h_tool_mean"] == pytest.approx(0.25)
    assert m["agent/dynamic_rollouts_min"] == 1 and m["agent/dynamic_rollouts_max"] == 3
    assert m["agent/iterations"] == 5 and m["agent/consecutive_max"] == 2
    plain = agent_metrics(
        keys, np.zeros(4, bool), [{**r, "dynamic": None, "iterations": None} for r in summaries], 2
    )
    assert not any(k in plain for k in ("agent/h_root_mean", "agent/iterations", "agent/consecutive_max"))
