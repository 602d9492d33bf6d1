"""A capture error on one of two data-parallel ranks (verl's Ray worker group on CPU, gloo, FSDP2)
fails both ranks promptly with that rank's error, and leaves them able to run the next update.

Its own Ray cluster (num_cpus=2), with the test-only fault injection of verl_fault.py loaded in
every worker; about 20 s on 2 cores."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")
pytest.importorskip("ray", reason="the verl extra is not installed: pip install -e '.[verl]'")

import torch  # noqa: E402
import verl_cpu_platform  # noqa: E402,F401
import verl_harness as H  # noqa: E402
from test_verl_ray_ranks import REPO, two_rank_group  # noqa: E402

pytestmark = pytest.mark.verl


@pytest.fixture(scope="module")
def fault_file(tmp_path_factory):
    """Write a rank into it and that rank's capture raises (verl_fault.py); absent = no fault."""
    return tmp_path_factory.mktemp("fault") / "rank"


@pytest.fixture(scope="module")
def ray_cluster(fault_file):
    import ray

    env = {
        "VERL_USE_EXTERNAL_MODULES": "verl_cpu_platform,verl_fault",
        "ARCHER_TEST_FAULT_FILE": str(fault_file),
        "PYTHONPATH": os.pathsep.join([str(H.HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RAY_AUTH_MODE": "disabled",
    }
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_a_capture_error_on_one_rank_fails_both_ranks_with_its_message(ray_cluster, tmp_path, fault_file):
    """Rank 1's forward hook raises inside the model's forward. Rank 0 must not wait in the next
    FSDP collective for a rank that left: rank 1 finishes the update without capturing, then both
    raise rank 1's error. Each rank's own result is awaited: without the fix rank 0 waits in the
    collective until the process group's timeout and then fails with a timeout, not rank 1's error."""
    import ray
    from verl.single_controller.base.decorator import MAGIC_ATTR

    from archer.core.engines.verl.steps import plan_influence
    from archer.core.engines.verl.worker import ArcherActorRolloutRefWorker

    model_dir = H.save_tiny_model(tmp_path / "tiny")
    step = H.make_step(seed=11)
    settings = H.influence_settings()
    ref = H.local_reference(model_dir, step, settings)
    keys = [f"{u}_{i}_0" for i, u in enumerate(step.uids)]
    seq_adv = (ref["advantages"].sum(-1) / torch.tensor([len(r) for r in step.responses])).numpy()
    plan = plan_influence(keys, np.zeros(step.size, dtype=bool), np.array(step.rewards), seq_adv, settings)
    order = [i for i in range(step.size) if i % 2 == 0] + [i for i in range(step.size) if i % 2 == 1]
    batch = H.update_meta(  # as above: both ranks hold traced rows of every group
        H.v1_rows(step, ref["old"], ref["advantages"], plan.fields, order), mini_batch_size=step.size
    )
    wg = two_rank_group(ray_cluster, model_dir, mini=step.size)
    wg.archer_setup({"loss_knobs": {}, "influence": settings.__dict__})

    # what wg.update_actor(batch) does, keeping one future per rank
    dispatch = getattr(ArcherActorRolloutRefWorker.update_actor, MAGIC_ATTR)["dispatch_mode"]["dispatch_fn"]
    fault_file.write_text("1")
    try:
        args, kwargs = dispatch(wg, batch)
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        futures = wg.execute_all_async(type(wg.update_actor).__name__, *args, **kwargs)
        messages = []
        for future in futures:
            with pytest.raises(ray.exceptions.RayTaskError) as e:
                ray.get(future)
            messages.append(str(e.value))
    finally:
        fault_file.unlink()
    for rank, message in enumerate(messages):
        assert (
            "influence capture failed on rank 1: RuntimeError: injected capture failure on rank 1" in message
        ), f"rank {rank}: {message[-1500:]}"
    # both ranks are free and in step again: the next update runs and captures on both
    wg.update_actor(batch)
    per_rank = wg.archer_take_influence()
    assert len(per_rank) == 2 and all(per_rank)
