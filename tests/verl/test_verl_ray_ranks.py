"""Two data-parallel ranks in verl's own Ray single-controller worker group on CPU (gloo, FSDP2):
archer's `ArcherActorRolloutRefWorker` (colocated and spawned by role, as the V1 trainer does),
built by `init_model` from verl's generated trainer config,
with every prompt group split across both ranks. The merged per-row influence equals the
single-rank result of the same worker code (tolerance 1e-5 of the largest score; identity mode,
so the dp_size in verl's loss normaliser would show up squared), and no group is dropped.

One Ray cluster (num_cpus=2, no dashboard) for the module; about 20 s on 2 cores.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")
pytest.importorskip("ray", reason="the verl extra is not installed: pip install -e '.[verl]'")

import torch  # noqa: E402
import verl_cpu_platform  # noqa: E402,F401
import verl_harness as H  # noqa: E402

pytestmark = pytest.mark.verl

REPO = H.HERE.parents[1]


def actor_rollout_ref_config(model_dir, *, mini: int, micro: int):
    """verl's own generated trainer config, `actor_rollout_ref` section, set up for CPU."""
    import verl
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(
        os.path.join(os.path.dirname(verl.__file__), "trainer/config/_generated_ppo_trainer.yaml")
    )
    arr = cfg.actor_rollout_ref
    OmegaConf.set_struct(arr, False)
    arr.model.path = str(model_dir)
    arr.model.override_config = {"attn_implementation": "sdpa"}
    arr.model.enable_gradient_checkpointing = False
    arr.model.use_remove_padding = True
    arr.actor.strategy = "fsdp2"
    arr.actor.ppo_mini_batch_size = mini
    arr.actor.ppo_micro_batch_size_per_gpu = micro
    arr.actor.use_torch_compile = False
    arr.actor.fsdp_config.strategy = "fsdp2"
    arr.actor.fsdp_config.use_torch_compile = False
    arr.actor.fsdp_config.mixed_precision = {
        "param_dtype": "fp32",
        "reduce_dtype": "fp32",
        "buffer_dtype": "fp32",
    }
    arr.actor.optim.lr = 1e-3
    arr.actor.optim.weight_decay = 0.0
    arr.actor.optim.clip_grad = 1e9
    arr.actor.optim.total_training_steps = 10
    arr.actor.policy_loss.loss_mode = "vanilla"
    arr.rollout.log_prob_micro_batch_size_per_gpu = micro
    arr.rollout.n = 1
    arr.rollout.name = "vllm"
    return arr


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    env = {
        "VERL_USE_EXTERNAL_MODULES": "verl_cpu_platform",
        "PYTHONPATH": os.pathsep.join([str(H.HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RAY_AUTH_MODE": "disabled",
    }
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()


def two_rank_group(ray_cluster, model_dir, mini: int):
    """archer's worker on two data-parallel ranks, built as the V1 trainer's _setup builds it (a
    colocated worker class, spawned by role), so archer's extra methods must be bound there."""
    from verl.single_controller.ray import (
        RayClassWithInitArgs,
        RayResourcePool,
        RayWorkerGroup,
        create_colocated_worker_cls,
    )

    from archer.core.engines.verl.worker import ArcherActorRolloutRefWorker

    config = actor_rollout_ref_config(model_dir, mini=mini, micro=4)
    pool = RayResourcePool(process_on_nodes=[2], use_gpu=False, max_colocate_count=1)
    cls = RayClassWithInitArgs(
        cls=ray_cluster.remote(ArcherActorRolloutRefWorker), config=config, role="actor"
    )
    group = RayWorkerGroup(
        resource_pool=pool, ray_cls_with_init=create_colocated_worker_cls({"actor": cls}), device_name="cpu"
    )
    wg = group.spawn(prefix_set={"actor"})["actor"]
    assert wg.world_size == 2
    wg.init_model()
    return wg


def test_group_split_across_two_ranks_gives_the_single_rank_result(ray_cluster, tmp_path):

    from archer.core.engines.verl.steps import merge_influence, plan_influence

    model_dir = H.save_tiny_model(tmp_path / "tiny")
    step = H.make_step(seed=11)
    settings = H.influence_settings()
    ref = H.local_reference(model_dir, step, settings)
    keys = [f"{u}_{i}_0" for i, u in enumerate(step.uids)]
    seq_adv = (ref["advantages"].sum(-1) / torch.tensor([len(r) for r in step.responses])).numpy()
    plan = plan_influence(keys, np.zeros(step.size, dtype=bool), np.array(step.rewards), seq_adv, settings)
    # the dispatch gives rank 0 the first half of this order and rank 1 the second: samples 0 and 2
    # of every group (one right, one wrong) go to rank 0, samples 1 and 3 to rank 1
    order = [i for i in range(step.size) if i % 2 == 0] + [i for i in range(step.size) if i % 2 == 1]
    halves = [order[: step.size // 2], order[step.size // 2 :]]
    assert all({step.uids[r] for r in h} == set(step.uids) for h in halves)

    def batch():
        return H.update_meta(
            H.v1_rows(step, ref["old"], ref["advantages"], plan.fields, order), mini_batch_size=step.size
        )

    # single rank, same worker code, in this process
    single = H.training_worker(model_dir, settings, micro=4)
    single.train_mini_batch(batch())
    one_rank, _ = single.archer_take_influence()

    # two ranks through verl's Ray worker group
    wg = two_rank_group(ray_cluster, model_dir, mini=step.size)
    replies = wg.archer_setup({"loss_knobs": {}, "influence": settings.__dict__})
    assert [r["influence_modules"] for r in replies][0] == replies[1]["influence_modules"]
    assert len(replies[0]["influence_modules"]) == 4
    wg.update_actor(batch())
    per_rank = wg.archer_take_influence()
    assert len(per_rank) == 2 and all(per_rank)
    assert sorted(per_rank[0][0]) == sorted(set(halves[0]) & set(step.traced_rows()))
    merged, metrics = merge_influence(per_rank)

    selected = step.traced_rows()
    assert sorted(merged) == sorted(one_rank) == selected
    assert metrics["influence/groups_selected"] == 2 and metrics["influence/rows_emitted"] == len(selected)
    scale = max(float(np.abs(v).max()) for v in one_rank.values())
    for r in selected:
        np.testing.assert_allclose(merged[r], one_rank[r], rtol=0, atol=1e-5 * scale, err_msg=f"row {r}")
    # and equal to the local engine as well
    for r in selected:
        np.testing.assert_allclose(merged[r], ref["influence"][r], rtol=0, atol=1e-5 * scale)
