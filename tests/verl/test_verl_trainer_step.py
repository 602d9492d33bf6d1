"""The `archer_sync` trainer's step glue, with verl's real worker behind a TransferQueue stand-in.

`ArcherTrainer._update_actor` runs as in a V1 step: the rows sit in a key-value store keyed like
TransferQueue ("{uid}_{session}_{index}"), in a balanced (shuffled) order with verl's padding rows
appended; the trainer writes archer's row fields next to them, verl's `_update_actor` hands the
batch to archer's real training worker (in this process), and the trainer collects the scores
and writes the trace. The trace must hold every real response once (no padding), grouped by
prompt, with the entropy stored under its key and the influence of its own row — equal to the
local engine's (tolerance 1e-5 of the largest score). Plus the driver's pure functions.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

import torch  # noqa: E402
import verl_cpu_platform  # noqa: E402,F401
import verl_harness as H  # noqa: E402

pytestmark = pytest.mark.verl
PADDING = 4


class FakeTransferQueue:
    """kv_batch_get / kv_batch_put over a dict of rows, with TransferQueue's TensorDict shapes."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def put_rows(self, rows: dict[str, dict]) -> None:
        for k, v in rows.items():
            self.rows.setdefault(k, {}).update(v)

    def kv_batch_get(self, keys, partition_id=None, select_fields=None):
        from verl.utils import tensordict_utils as tu

        names = select_fields or sorted(set().union(*(self.rows[k].keys() for k in keys)))
        out = {}
        for name in names:
            values = [self.rows[k][name] for k in keys]  # KeyError for a field the rows lack, like TQ
            if isinstance(values[0], torch.Tensor) and values[0].dim() == 1:
                out[name] = torch.nested.as_nested_tensor(values, layout=torch.jagged)
            elif isinstance(values[0], torch.Tensor):
                out[name] = torch.stack(values)
            else:
                out[name] = values
        return tu.get_tensordict(out)

    def kv_batch_put(self, keys, partition_id=None, fields=None, tags=None):
        for name in fields.keys():
            col = fields[name]
            values = col.unbind() if getattr(col, "is_nested", False) else list(col)
            for k, v in zip(keys, values):
                self.rows[k][name] = v
        return None


class InProcessWorkerGroup:
    """The two worker-group calls the trainer makes, on one in-process ArcherTrainingWorker."""

    def __init__(self, worker, store: FakeTransferQueue):
        self.worker, self.store = worker, store
        self.fields_seen: list[str] = []

    def update_actor(self, meta):
        from verl.utils import tensordict_utils as tu

        td = self.store.kv_batch_get(meta.keys, select_fields=meta.fields)
        self.fields_seen = list(td.keys())
        tu.assign_non_tensor(td, **meta.extra_info)
        return self.worker.train_mini_batch(td)

    def archer_take_influence(self):
        return [self.worker.archer_take_influence()]


def _store_rows(step, ref, masks=None):
    """The step's rows as TransferQueue holds them after old-log-prob and advantages, plus four
    of verl's padding rows (one shared `pad…` uid, empty response mask, no reward) that make the
    batch a whole mini-batch, as verl's `_balance_batch` does. `masks`: agent rows as archer's agent
    loop hands them over (response_mask = loss_mask 0 on tool results; roles in extra_fields)."""
    from archer.core.trace.schema import ROLE_MODEL, ROLE_TOOL_RESULT

    rows, keys, tags = {}, [], []
    for i in range(step.size):
        L = len(step.responses[i])
        key = f"{step.uids[i]}_{i}_0"
        rm = torch.zeros(L)
        rm[-1] = step.rewards[i]
        mask = torch.tensor(masks[i] if masks is not None else [1] * L, dtype=torch.long)
        extra = {"reward_extra_info": {"acc": step.rewards[i]}}
        if masks is not None:
            roles = [ROLE_MODEL if m else ROLE_TOOL_RESULT for m in masks[i]]
            extra["archer_agent"] = {"origin": "initial", "calls": [], "decisions": [], "roles": roles}
        rows[key] = {
            "prompts": torch.tensor(step.prompts[i]),
            "responses": torch.tensor(step.responses[i]),
            "input_ids": torch.tensor(step.prompts[i] + step.responses[i]),
            "position_ids": torch.arange(len(step.prompts[i]) + L),
            "response_mask": mask,
            "loss_mask": mask,
            "old_log_probs": ref["old"][i, :L].float(),
            "advantages": ref["advantages"][i, :L].float(),
            "entropy": ref["entropy"][i, :L].float(),
            "rm_scores": rm,
            "uid": step.uids[i],
            "data_source": "synthetic",
            "extra_fields": extra,
        }
        keys.append(key)
        tags.append({"status": "success"})
    for j in range(PADDING):
        key = f"padcafe_{j}_0"
        rows[key] = {
            **rows[keys[0]],
            "uid": "padcafe",
            "response_mask": torch.zeros(3, dtype=torch.long),
            "loss_mask": torch.zeros(3, dtype=torch.long),
            "responses": torch.tensor([1, 1, 1]),
            "input_ids": torch.tensor(step.prompts[0] + [1, 1, 1]),
            "position_ids": torch.arange(len(step.prompts[0]) + 3),
            "old_log_probs": torch.zeros(3),
            "advantages": torch.zeros(3),
            "entropy": torch.zeros(3),
            "rm_scores": torch.zeros(3),
            "extra_fields": {"reward_extra_info": {}},
        }
        keys.append(key)
        tags.append({"status": "success", "is_padding": True})
    return rows, keys, tags


@pytest.mark.parametrize("agent", [False, True], ids=["plain", "agent"])
def test_update_actor_plans_captures_and_traces_by_key(tmp_path, monkeypatch, agent):
    """`agent`: rows of archer's agent loop (tool-result tokens out of the loss, roles in
    extra_fields): the trace's selected groups hold the local engine's agent-mode influence, one
    finite score per token, tool results included, beside `token_role`."""
    from omegaconf import OmegaConf
    from transfer_queue import KVBatchMeta

    from archer.core.engines.verl import trainer as trainer_mod
    from archer.core.trace import TraceReader, TraceWriter

    model_dir = H.save_tiny_model(tmp_path / "tiny")
    step = H.make_step(seed=5)
    settings = H.influence_settings()
    masks = H.tool_result_masks(step) if agent else None
    ref = H.local_reference(model_dir, step, settings, loss_masks=masks)
    rows, keys, tags = _store_rows(step, ref, masks)
    store = FakeTransferQueue()
    store.put_rows(rows)
    monkeypatch.setattr(trainer_mod, "tq", store)
    order = [int(i) for i in np.random.default_rng(3).permutation(step.size)] + list(
        range(step.size, step.size + PADDING)
    )
    meta = KVBatchMeta(
        keys=[keys[i] for i in order],
        tags=[tags[i] for i in order],
        partition_id="train",
        fields=sorted(rows[keys[0]]),
        extra_info={},
    )

    n = step.uids.count("u0")
    trainer = object.__new__(trainer_mod.ArcherTrainer)
    trainer.config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "actor": {
                    "ppo_mini_batch_size": (step.size + PADDING) // n,
                    "calculate_entropy": False,
                    "entropy_coeff": 0.0,
                    "ppo_epochs": 1,
                    "data_loader_seed": 42,
                    "shuffle": False,
                },
                "rollout": {"n": n, "temperature": 1.0},
            },
            "data": {"max_response_length": 8},
        }
    )
    trainer.global_steps = 1
    trainer.archer_influence = settings
    trainer.archer_trace = TraceWriter(tmp_path / "trace", {"engine": "verl"})
    trainer.archer = {"logging": {"histograms_every": 0}}  # the section _setup reads (histograms off)
    worker = H.training_worker(model_dir, settings, mini=step.size + PADDING)
    trainer.actor_rollout_wg = InProcessWorkerGroup(worker, store)

    metrics: dict = {}
    assert trainer._update_actor(meta, metrics) is meta
    trainer.archer_trace.close()

    # the plan travelled with the rows: fields named in the meta, row id = position in the key list
    assert {"archer_row", "archer_group", "archer_accepted", "archer_sign"} <= set(
        trainer.actor_rollout_wg.fields_seen
    )
    assert [int(store.rows[k]["archer_row"]) for k in meta.keys] == list(range(step.size)) + [-1] * PADDING
    assert meta.extra_info["archer_influence"] is True
    assert metrics["influence/groups_selected"] == 2 and metrics["influence/groups_constant"] == 2
    assert "actor/pg_loss" in metrics and "time/influence" in metrics

    reader = TraceReader(tmp_path / "trace")
    assert reader.steps() == [1]
    table = reader.read_step(1).to_pylist()
    assert len(table) == step.size  # every real response once, no padding row
    assert [r["uid"] for r in table] == sorted(step.uids)
    scale = max(float(np.abs(v).max()) for v in ref["influence"] if v is not None)
    traced = step.traced_rows()
    for r in table:
        i = r["sample_index"]  # the session id in the key: the row's original index here
        L = len(step.responses[i])
        assert r["response_ids"] == step.responses[i] and r["prompt_ids"] == step.prompts[i]
        np.testing.assert_allclose(
            np.array(r["entropy"], dtype=np.float32), ref["entropy"][i, :L].numpy(), atol=2e-3
        )  # stored as float16
        assert r["reward"] == step.rewards[i] and r["correct"] == bool(step.rewards[i])
        assert r["data_source"] == "synthetic"
        if i not in traced:  # all right or all wrong: no contrast, not traced
            assert r["influence"] is None and r["accepted"] is None
        else:
            assert r["accepted"] == bool(step.rewards[i])
            # the trace stores scores as float16 on the step's power-of-two scale: relative error <= 2^-11
            np.testing.assert_allclose(
                np.array(r["influence"], dtype=np.float32),
                ref["influence"][i],
                rtol=2**-11,
                atol=1e-5 * scale,
            )
            assert np.isfinite(np.array(r["influence"], dtype=np.float64)).all()
        if agent:
            from archer.core.trace.schema import ROLE_TOOL_RESULT

            roles = np.array(r["token_role"])
            assert len(roles) == L and ((roles == ROLE_TOOL_RESULT) == (np.array(masks[i]) == 0)).all()
    if agent:  # the selected groups' tool-result tokens were scored (as context), finitely
        tool = [
            v
            for r in table
            if r["influence"] is not None
            for v, role in zip(r["influence"], r["token_role"])
            if role == ROLE_TOOL_RESULT
        ]
        assert tool and np.isfinite(tool).all()


def test_plan_marks_rows_and_leaves_padding_out():
    from archer.core.engines.verl.steps import padding_mask, plan_influence

    keys = ["b_0_0", "a_1_0", "padx_0_0", "a_0_0", "b_1_0", "c_0_0", "c_1_0"]
    tags = [{}, {}, {"is_padding": True}, {}, {}, {}, {}]
    pad = padding_mask(keys, tags)
    assert pad.tolist() == [False, False, True, False, False, False, False]
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    adv = np.array([0.7, -0.7, 0.0, 0.7, -0.7, 0.0, 0.0])
    plan = plan_influence(keys, pad, rewards, adv, H.influence_settings())
    f = plan.fields
    assert f["archer_row"].tolist() == [0, 1, -1, 3, 4, 5, 6]
    assert (f["archer_group"] >= 0).tolist() == [True, True, False, True, True, False, False]  # c: constant
    assert f["archer_group"][0] == f["archer_group"][4] != f["archer_group"][1] == f["archer_group"][3]
    assert f["archer_accepted"].tolist() == [1, 0, 0, 1, 0, 0, 0]
    assert f["archer_sign"].tolist() == [1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 0.0]
    assert plan.accepted == [True, False, None, True, False, None, None]
    assert plan.n_selected == 4 and plan.constant_groups == 1


def test_accepted_is_correctness_not_the_overlong_penalised_score(monkeypatch):
    """Group a: two correct answers, the long one penalised (0.8), one wrong: both correct ones
    are accepted. Group b: all wrong, of mixed lengths (penalties -0.2, 0, -0.5): no contrast, not
    traced. The driver reads `acc` from the rows' reward_extra_info, as the trace's correct column."""
    from omegaconf import OmegaConf
    from transfer_queue import KVBatchMeta

    from archer.core.engines.verl import trainer as trainer_mod

    scores = {"a_0_0": (1.0, 1), "a_1_0": (0.8, 1), "a_2_0": (0.0, 0)}
    scores |= {"b_0_0": (-0.2, 0), "b_1_0": (0.0, 0), "b_2_0": (-0.5, 0)}
    store = FakeTransferQueue()
    for key, (score, acc) in scores.items():
        rm = torch.zeros(4)
        rm[-1] = score
        store.put_rows(
            {
                key: {
                    "rm_scores": rm,
                    "advantages": torch.full((4,), score - 0.5),
                    "response_mask": torch.ones(4, dtype=torch.long),
                    "extra_fields": {"reward_extra_info": {"acc": acc, "score": score}},
                }
            }
        )
    monkeypatch.setattr(trainer_mod, "tq", store)
    trainer = object.__new__(trainer_mod.ArcherTrainer)
    trainer.config = OmegaConf.create({})
    trainer.archer_influence = H.influence_settings()
    keys = list(scores)
    meta = KVBatchMeta(keys=keys, tags=[{}] * 6, partition_id="train", fields=None, extra_info={})
    plan = trainer._archer_plan(meta, {})
    assert plan.fields["archer_accepted"].tolist() == [1, 1, 0, 0, 0, 0]
    assert (plan.fields["archer_group"] >= 0).tolist() == [True, True, True, False, False, False]
    assert plan.accepted == [True, True, False, None, None, None]
    assert plan.constant_groups == 1
    assert [int(store.rows[k]["archer_accepted"]) for k in keys] == [1, 1, 0, 0, 0, 0]


def test_merge_refuses_a_row_from_two_ranks():
    from archer.core.engines.verl.steps import merge_influence

    a = ({1: np.ones(2)}, {"influence/rows_emitted": 1.0, "influence/groups_selected": 2.0})
    b = ({2: np.ones(3)}, {"influence/rows_emitted": 1.0, "influence/groups_selected": 2.0})
    rows, metrics = merge_influence([a, b, None])
    assert sorted(rows) == [1, 2] and metrics == {
        "influence/rows_emitted": 2.0,
        "influence/groups_selected": 2.0,
    }
    with pytest.raises(RuntimeError, match="two data-parallel ranks"):
        merge_influence([a, a])


def test_the_trace_is_flushed_before_verl_saves_a_checkpoint(monkeypatch):
    """A step verl checkpoints (and a resume starts after) must already be on disk."""
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from archer.core.engines.verl.trainer import ArcherTrainer

    order = []

    class Writer:
        def flush(self):
            order.append("flush")

    monkeypatch.setattr(PPOTrainerSync, "_save_checkpoint", lambda self: order.append("checkpoint"))
    trainer = ArcherTrainer.__new__(ArcherTrainer)
    trainer.archer_trace = Writer()
    trainer._save_checkpoint()
    assert order == ["flush", "checkpoint"]


def test_a_step_is_logged_before_its_checkpoint_is_saved(monkeypatch):
    """verl saves before it validates and records the step; archer defers the save past the
    step's metrics line, so a checkpoint on disk always has its step (and validation) logged."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from archer.core.engines.verl.trainer import ArcherTrainer

    order = []

    class Log:
        def log(self, step, metrics):
            order.append(("line", step, "timing_s/save_checkpoint" in metrics))

    def verl_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        metrics["timing_s/save_checkpoint"] = 0.0

    monkeypatch.setattr(PPOTrainer, "step", lambda self, metrics, timing_raw: order.append("step"))
    monkeypatch.setattr(PPOTrainerSync, "_save_checkpoint", lambda self: order.append("checkpoint"))
    monkeypatch.setattr(PPOTrainer, "_compute_metrics", verl_metrics)
    trainer = ArcherTrainer.__new__(ArcherTrainer)
    trainer.archer_trace, trainer.archer_metrics = None, Log()
    metrics: dict = {}
    # verl's loop: step, save (when due), validate, record
    trainer.step(metrics, {})
    trainer._save_checkpoint()
    assert order == ["step"]  # not yet
    trainer._compute_metrics(None, metrics, {}, global_steps=2, epoch=0)
    assert order == ["step", ("line", 2, False), "checkpoint"]
    assert metrics["timing_s/save_checkpoint"] >= 0.0  # the real save's time, for verl's trackers
    # a step without a save, and a save outside the loop, happen as verl asks
    order.clear()
    trainer.step(metrics, {})
    trainer._compute_metrics(None, {}, {}, global_steps=3, epoch=0)
    trainer._save_checkpoint()
    assert order == ["step", ("line", 3, True), "checkpoint"]  # verl's metrics left as they are


def test_verl_sees_its_sync_mode_and_a_fast_replay_buffer_poll():
    """archer's trainer is chosen by archer's runner; verl's own code must take its sync paths
    (the async replay buffer, TransferQueue dumps in checkpoints and a forced gen batch of 1 follow
    any other mode string)."""
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

    from archer.core.config.compose import compose
    from archer.core.engines.verl.config import compose_verl
    from archer.core.engines.verl.trainer import POLL_INTERVAL_S, ArcherTrainer

    composed = compose(
        "quickstart-verl", ["model.path=/m", "data.train_files=[/d.parquet]", "warmup.enable=false"]
    )
    cfg = compose_verl(composed, __import__("pathlib").Path("/runs/r")).cfg
    assert cfg.trainer.v1.trainer_mode == "sync"
    trainer = ArcherTrainer.__new__(ArcherTrainer)
    trainer.config = cfg
    trainer.trainer_mode = cfg.trainer.v1.trainer_mode
    buffer = trainer._build_replay_buffer()
    assert isinstance(buffer, ReplayBuffer) and not isinstance(buffer, ReplayBufferAsync)
    assert buffer.poll_interval == POLL_INTERVAL_S
