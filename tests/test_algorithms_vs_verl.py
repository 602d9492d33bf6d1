"""Cross-check archer.core.algorithms against verl 0.9.1's `core_algos` on random CPU tensors.

Skipped, with the reason shown, only when the verl extra is not installed. verl is imported once
per module (about 7 s). Groups have 4 members: archer deliberately differs from verl on singleton
groups (see docs/algorithms.md), which `test_singleton_groups_differ_from_verl_on_purpose` pins.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

from archer.core.algorithms import (  # noqa: E402
    KL_TYPES,
    LOSS_AGG_MODES,
    PolicyLossConfig,
    agg_loss,
    get_adv_estimator,
    get_policy_loss,
    kl_penalty,
)

pytestmark = pytest.mark.verl

ATOL = 1e-6
SEEDS = [0, 1, 2]
BATCHES = [8, 20, 32]
GROUP = 4


@pytest.fixture(scope="module")
def core_algos():
    from verl.trainer.ppo import core_algos

    return core_algos


@pytest.fixture(scope="module")
def actor_config_cls():
    from verl.workers.config import ActorConfig

    return ActorConfig


def make_batch(seed: int, B: int, T: int = 9):
    """Masked tails, outcome rewards on the last valid token, shuffled groups of 4, PPO tensors."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    scores = torch.randint(0, 2, (B,), generator=g).float() * torch.rand(B, generator=g) + 0.1 * torch.randn(
        B, generator=g
    )
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = scores
    rng = np.random.default_rng(seed)
    index = np.array([f"uid-{k // GROUP}" for k in range(B)], dtype=object)
    rng.shuffle(index)
    old = -torch.rand(B, T, generator=g) * 4
    new = old + 0.5 * torch.randn(B, T, generator=g)
    # ratios far above the dual-clip bound on some tokens
    new[torch.rand(B, T, generator=g) < 0.1] += 2.0
    adv = torch.randn(B, T, generator=g)
    return {"rewards": rewards, "mask": mask, "index": index, "old": old, "new": new, "adv": adv}


def assert_close(ours: torch.Tensor, theirs: torch.Tensor):
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_matches_verl(core_algos, seed, B, norm_by_std):
    b = make_batch(seed, B)
    ours, ours_ret = get_adv_estimator("grpo")(
        b["rewards"], b["mask"], b["index"], norm_adv_by_std_in_grpo=norm_by_std
    )
    theirs, theirs_ret = core_algos.compute_grpo_outcome_advantage(
        b["rewards"].clone(), b["mask"], b["index"], norm_adv_by_std_in_grpo=norm_by_std
    )
    assert_close(ours, theirs)
    assert_close(ours_ret, theirs_ret)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("B", BATCHES)
def test_rloo_matches_verl(core_algos, seed, B):
    b = make_batch(seed, B)
    ours, _ = get_adv_estimator("rloo")(b["rewards"], b["mask"], b["index"])
    theirs, _ = core_algos.compute_rloo_outcome_advantage(b["rewards"].clone(), b["mask"], b["index"])
    assert_close(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("B", BATCHES)
def test_reinforce_plus_plus_baseline_matches_verl(core_algos, seed, B):
    # verl's version takes an optional AlgoConfig that it does not read; None runs on CPU.
    b = make_batch(seed, B)
    ours, _ = get_adv_estimator("reinforce_plus_plus_baseline")(b["rewards"], b["mask"], b["index"])
    theirs, _ = core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage(
        b["rewards"].clone(), b["mask"], b["index"], config=None
    )
    assert_close(ours, theirs)


def test_singleton_groups_differ_from_verl_on_purpose(core_algos):
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.5], [0.0, 0.2]])
    mask = torch.ones(3, 2)
    index = np.array(["a", "b", "b"], dtype=object)
    ours, _ = get_adv_estimator("grpo")(rewards, mask, index)
    theirs, _ = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask, index)
    assert torch.all(ours[0] == 0)  # archer: no peer, no baseline, no signal
    assert theirs[0, 0].item() == pytest.approx(1.0, abs=1e-5)  # verl: mean 0, std 1 -> raw score
    assert_close(ours[1:], theirs[1:])  # real groups agree


# -------------------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_matches_verl(core_algos, seed, mode):
    b = make_batch(seed, 16)
    loss_mat = torch.randn(16, 9, generator=torch.Generator().manual_seed(seed + 100))
    assert_close(agg_loss(loss_mat, b["mask"], mode), core_algos.agg_loss(loss_mat, b["mask"], mode))
    # explicit mini-batch denominators, as in gradient accumulation
    num_tokens = b["mask"].sum() * 3
    ours = agg_loss(loss_mat, b["mask"], mode, batch_num_tokens=num_tokens, global_batch_size=40)
    theirs = core_algos.agg_loss(
        loss_mat, b["mask"], mode, dp_size=1, batch_num_tokens=num_tokens, global_batch_size=40
    )
    assert_close(ours, theirs)


# -------------------------------------------------------------------------------------------- KL


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kl_type", KL_TYPES)
def test_kl_penalty_matches_verl(core_algos, seed, kl_type):
    b = make_batch(seed, 16)
    ref = b["old"] + 3.0 * torch.randn(b["old"].shape, generator=torch.Generator().manual_seed(seed))
    # include values that hit low_var_kl's clamps
    ref[0, :3] = torch.tensor([-40.0, 30.0, 0.0])
    assert_close(kl_penalty(b["new"], ref, kl_type), core_algos.kl_penalty(b["new"], ref, kl_type))


# ------------------------------------------------------------------------------------ vanilla PPO


CLIP_SETTINGS = [
    (0.2, 0.2, 3.0),  # symmetric PPO
    (0.2, 0.28, 3.0),  # DAPO clip-higher
    (0.1, 0.3, 1.5),  # tight dual clip
    (0.3, 0.3, 10.0),  # Archer's c = 10
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("clip", CLIP_SETTINGS)
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_vanilla_policy_loss_matches_verl(core_algos, actor_config_cls, seed, B, clip, mode):
    low, high, c = clip
    b = make_batch(seed, B)
    verl_cfg = actor_config_cls(
        strategy="fsdp",
        ppo_micro_batch_size_per_gpu=1,
        rollout_n=GROUP,
        clip_ratio_low=low,
        clip_ratio_high=high,
        clip_ratio_c=c,
    )
    new_theirs = b["new"].clone().requires_grad_(True)
    theirs_loss, theirs_metrics = core_algos.compute_policy_loss_vanilla(
        b["old"], new_theirs, b["adv"], b["mask"], mode, verl_cfg
    )
    new_ours = b["new"].clone().requires_grad_(True)
    cfg = PolicyLossConfig(clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c)
    out = get_policy_loss("vanilla")(b["old"], new_ours, b["adv"], b["mask"], loss_agg_mode=mode, config=cfg)

    assert_close(out.loss, theirs_loss)
    for key in ("pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"):
        assert out.metrics[key] == pytest.approx(theirs_metrics[f"actor/{key}"], abs=ATOL)
    (g_ours,) = torch.autograd.grad(out.loss, new_ours)
    (g_theirs,) = torch.autograd.grad(theirs_loss, new_theirs)
    assert_close(g_ours, g_theirs)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_vanilla_global_batch_denominators_match_verl(core_algos, actor_config_cls, mode):
    b = make_batch(7, 16)
    verl_cfg = actor_config_cls(strategy="fsdp", ppo_micro_batch_size_per_gpu=1, rollout_n=GROUP)
    # global_batch_info is how verl's engine passes mini-batch totals into the loss
    verl_cfg.global_batch_info.update({"dp_size": 1, "batch_num_tokens": 200, "global_batch_size": 48})
    theirs, _ = core_algos.compute_policy_loss_vanilla(
        b["old"], b["new"], b["adv"], b["mask"], mode, verl_cfg
    )
    out = get_policy_loss("vanilla")(
        b["old"],
        b["new"],
        b["adv"],
        b["mask"],
        loss_agg_mode=mode,
        config=PolicyLossConfig(),
        batch_num_tokens=200,
        global_batch_size=48,
    )
    assert_close(out.loss, theirs)
