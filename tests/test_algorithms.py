"""Unit tests for archer.core.algorithms: hand-computed values, autograd checks, invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from archer.core.algorithms import (
    ADV_ESTIMATOR_REGISTRY,
    KL_TYPES,
    LOSS_AGG_MODES,
    POLICY_LOSS_REGISTRY,
    GroupAccumulator,
    PolicyLossConfig,
    agg_loss,
    entropy_from_logits,
    get_adv_estimator,
    get_policy_loss,
    high_entropy_mask,
    informative_groups,
    kl_penalty,
    logprobs_and_entropy,
    logprobs_from_logits,
    masked_quantile,
    overlong_penalty,
    register_adv_estimator,
    register_policy_loss,
)
from archer.core.config import schema
from archer.errors import ConfigError

# ------------------------------------------------------------------------------------------ helpers


def outcome_rewards(scores, lengths, T):
    """[B, T] token rewards with each score on the response's last valid token, and the mask."""
    B = len(scores)
    mask = torch.zeros(B, T)
    rewards = torch.zeros(B, T)
    for i, (s, n) in enumerate(zip(scores, lengths)):
        mask[i, :n] = 1
        rewards[i, n - 1] = s
    return rewards, mask


def row(values):
    return torch.tensor([values], dtype=torch.float64)


# ---------------------------------------------------------------------------------------- registries


def test_registries_cover_exactly_the_config_choices():
    assert set(ADV_ESTIMATOR_REGISTRY) == set(schema.ADV_ESTIMATORS)
    assert set(POLICY_LOSS_REGISTRY) == set(schema.POLICY_LOSSES)
    assert set(LOSS_AGG_MODES) == set(schema.LOSS_AGG_MODES)
    assert set(KL_TYPES) == set(schema.KL_TYPES)


@pytest.mark.parametrize(
    "lookup, names",
    [(get_adv_estimator, schema.ADV_ESTIMATORS), (get_policy_loss, schema.POLICY_LOSSES)],
)
def test_unknown_name_is_a_config_error_listing_known_names(lookup, names):
    with pytest.raises(ConfigError) as err:
        lookup("no_such_thing")
    assert "no_such_thing" in err.value.message
    for name in names:
        assert name in err.value.message
    assert err.value.hint


def test_unknown_agg_mode_and_kl_type_are_config_errors():
    x = torch.ones(2, 3)
    with pytest.raises(ConfigError, match="token-mean"):
        agg_loss(x, x, "token-sum")
    with pytest.raises(ConfigError, match="low_var_kl"):
        kl_penalty(x, x, "full")


def test_register_rejects_a_second_function_under_the_same_name():
    def est(*a, **k):
        return None

    register_adv_estimator("_test_est")(est)
    try:
        register_adv_estimator("_test_est")(est)  # the same function again is fine
        assert get_adv_estimator("_test_est") is est
        with pytest.raises(ValueError, match="already registered"):
            register_adv_estimator("_test_est")(lambda *a, **k: None)
    finally:
        del ADV_ESTIMATOR_REGISTRY["_test_est"]

    register_policy_loss("_test_loss")(est)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_policy_loss("_test_loss")(lambda *a, **k: None)
    finally:
        del POLICY_LOSS_REGISTRY["_test_loss"]


# ---------------------------------------------------------------------------------------- advantages


def test_grpo_hand_values_with_and_without_std():
    rewards, mask = outcome_rewards([1, 0, 1, 0, 0, 0, 1, 1], [3, 5, 2, 5, 1, 4, 5, 2], T=5)
    index = ["a"] * 4 + ["b"] * 4
    adv, ret = get_adv_estimator("grpo")(rewards, mask, index)
    # each group: mean 0.5, unbiased std sqrt(1/3) -> +-0.5 / 0.57735 = +-0.866
    signs = torch.tensor([1, -1, 1, -1, -1, -1, 1, 1], dtype=torch.float32)
    expected = signs * 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(adv, expected[:, None] * mask)
    assert torch.equal(adv, ret)
    assert torch.all(adv[mask == 0] == 0)

    adv_nostd, _ = get_adv_estimator("grpo")(rewards, mask, index, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(adv_nostd, (expected * (math.sqrt(1 / 3) + 1e-6))[:, None] * mask)


@pytest.mark.parametrize("name", schema.ADV_ESTIMATORS)
def test_constant_and_singleton_groups_get_zero_before_whitening(name):
    # groups: a = [1, 1, 1] (constant), b = [0.7] (singleton), c = [0, 1]
    rewards, mask = outcome_rewards([1, 1, 1, 0.7, 0, 1], [2, 2, 2, 2, 2, 2], T=2)
    index = ["a", "a", "a", "b", "c", "c"]
    adv, _ = get_adv_estimator(name)(rewards, mask, index)
    if name == "reinforce_plus_plus_baseline":
        # pre-whitening values [0,0,0,0,-0.5,0.5]: the zero rows all whiten to the same value
        assert torch.allclose(adv[:4], adv[0, 0].expand(4, 2))
        assert adv[4, 0] < adv[0, 0] < adv[5, 0]
    else:
        assert torch.all(adv[:4] == 0)
        assert adv[4, 0] < 0 < adv[5, 0]


def test_rloo_hand_values():
    rewards, mask = outcome_rewards([1, 0, 0, 0], [1, 2, 3, 3], T=3)
    adv, _ = get_adv_estimator("rloo")(rewards, mask, [7, 7, 7, 7])
    expected = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3])[:, None] * mask
    torch.testing.assert_close(adv, expected)


def test_reinforce_plus_plus_baseline_is_whitened_over_valid_tokens():
    g = torch.Generator().manual_seed(3)
    B, T = 12, 6
    lengths = torch.randint(1, T + 1, (B,), generator=g).tolist()
    rewards, mask = outcome_rewards(torch.rand(B, generator=g).tolist(), lengths, T)
    adv, _ = get_adv_estimator("reinforce_plus_plus_baseline")(rewards, mask, [i // 3 for i in range(B)])
    valid = adv[mask.bool()]
    assert abs(valid.mean().item()) < 1e-5
    assert abs(valid.std().item() - 1.0) < 1e-3  # rsqrt(var + 1e-8) leaves a ~1e-8 relative gap
    assert torch.all(adv[mask == 0] == 0)
    # centring within groups happens before whitening: group members keep their order
    scores = rewards.sum(-1)
    for grp in range(4):
        rows = slice(3 * grp, 3 * grp + 3)
        assert torch.equal(torch.argsort(adv[rows, 0]), torch.argsort(scores[rows]))


def _reference_group_advantages(scores, groups, mode, eps=1e-6):
    out = np.zeros(len(scores))
    for gid in set(groups):
        members = [i for i, x in enumerate(groups) if x == gid]
        s = np.array([scores[i] for i in members], dtype=np.float64)
        n = len(s)
        if n == 1:
            continue
        if mode == "grpo":
            vals = (s - s.mean()) / (s.std(ddof=1) + eps)
        elif mode == "grpo_nostd":
            vals = s - s.mean()
        else:  # rloo
            vals = np.array([s[k] - np.delete(s, k).mean() for k in range(n)])
        out[members] = vals
    return out


@pytest.mark.parametrize("mode", ["grpo", "grpo_nostd", "rloo"])
def test_vectorised_estimators_match_a_per_group_loop_on_ragged_shuffled_groups(mode):
    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 9, size=300)  # includes singletons
    groups = np.repeat([f"uid-{k}" for k in range(len(sizes))], sizes)
    rng.shuffle(groups)
    B, T = len(groups), 4
    scores = rng.integers(0, 3, size=B).astype(np.float64) * rng.random(B)
    lengths = rng.integers(1, T + 1, size=B).tolist()
    rewards, mask = outcome_rewards(scores.tolist(), lengths, T)
    rewards = rewards.double()
    if mode == "rloo":
        adv, _ = get_adv_estimator("rloo")(rewards, mask, groups)
    else:
        adv, _ = get_adv_estimator("grpo")(rewards, mask, groups, norm_adv_by_std_in_grpo=(mode == "grpo"))
    expected = _reference_group_advantages(rewards.sum(-1).tolist(), groups.tolist(), mode)
    np.testing.assert_allclose(adv[:, 0].numpy(), expected, atol=1e-9)
    assert torch.all(adv[mask == 0] == 0)


def test_group_index_types_give_the_same_advantages():
    rewards, mask = outcome_rewards([1, 0, 0.5, 0.2, 0.9, 0.1], [2] * 6, T=2)
    labels = [0, 1, 0, 1, 2, 2]
    variants = [
        labels,
        [f"p{x}" for x in labels],
        np.array([f"p{x}" for x in labels], dtype=object),
        np.array(labels),
        torch.tensor(labels),
    ]
    results = [get_adv_estimator("grpo")(rewards, mask, v)[0] for v in variants]
    for res in results[1:]:
        assert torch.equal(res, results[0])


def test_advantage_shape_errors():
    rewards, mask = outcome_rewards([1, 0], [1, 1], T=1)
    with pytest.raises(ValueError, match="labels"):
        get_adv_estimator("grpo")(rewards, mask, ["a"])
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        get_adv_estimator("grpo")(rewards, mask[:, :0], ["a", "a"])


# ---------------------------------------------------------------------------------------------- KL


def test_kl_penalty_values():
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    d = logp - ref  # [log 2, -log 2]
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), d)
    torch.testing.assert_close(kl_penalty(logp, ref, "kl"), d)
    torch.testing.assert_close(kl_penalty(logp, ref, "abs"), d.abs())
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), 0.5 * d**2)
    torch.testing.assert_close(kl_penalty(logp, ref, "mse"), 0.5 * d**2)
    k3 = torch.tensor([[0.5 + math.log(2) - 1, 2 - math.log(2) - 1]])
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), k3)
    torch.testing.assert_close(kl_penalty(logp, ref, "low_var_kl"), k3)


def test_low_var_kl_is_clamped_and_non_negative():
    logp = torch.tensor([[-60.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.0, -60.0, 0.0]])
    kl = kl_penalty(logp, ref, "low_var_kl")
    assert kl[0, 0].item() == 10.0  # exp(20) - 20 - 1, clamped to 10
    assert kl[0, 1].item() == 10.0  # exp(-20) + 20 - 1, clamped to 10
    assert kl[0, 2].item() == 0.0
    rand = kl_penalty(torch.randn(50, 20), torch.randn(50, 20), "k3")
    assert torch.all(rand >= 0)


# --------------------------------------------------------------------------------------- aggregation


def test_agg_loss_hand_values():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), float("inf")], [5.0, 6.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # NaN/inf and the fully masked row never reach the result
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    # explicit denominators replace the batch's own
    assert agg_loss(loss, mask, "token-mean", batch_num_tokens=8).item() == pytest.approx(10 / 8)
    assert agg_loss(loss, mask, "seq-mean-token-sum", global_batch_size=5).item() == pytest.approx(10 / 5)
    assert agg_loss(loss, mask, "seq-mean-token-mean", global_batch_size=4).item() == pytest.approx(6 / 4)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_of_nothing_is_zero_not_nan(mode):
    out = agg_loss(torch.ones(2, 3), torch.zeros(2, 3), mode)
    assert out.item() == 0.0


def test_agg_loss_denominators_negative_rejected_zero_gives_zero():
    with pytest.raises(ValueError, match="batch_num_tokens"):
        agg_loss(torch.ones(1, 2), torch.ones(1, 2), "token-mean", batch_num_tokens=-1)
    with pytest.raises(ValueError, match="global_batch_size"):
        agg_loss(torch.ones(1, 2), torch.ones(1, 2), "seq-mean-token-mean", global_batch_size=-1)
    # a mini-batch without a valid token: the engine passes 0 and gets 0, not NaN
    for mode in LOSS_AGG_MODES:
        out = agg_loss(torch.ones(1, 2), torch.zeros(1, 2), mode, batch_num_tokens=0, global_batch_size=0)
        assert out.item() == 0.0


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_gradient_accumulation_identity(mode):
    g = torch.Generator().manual_seed(5)
    B, T = 12, 7
    weights = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = (torch.arange(T)[None, :] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).double()
    mask[4] = 0  # an empty response in the middle of a micro-batch
    param = torch.randn(B, T, generator=g, dtype=torch.float64, requires_grad=True)

    full = agg_loss(param * weights, mask, mode)
    (full_grad,) = torch.autograd.grad(full, param)

    num_tokens = mask.sum()
    num_seqs = int((mask.sum(-1) > 0).sum())
    total = 0.0
    naive = 0.0
    for rows in (slice(0, 5), slice(5, 9), slice(9, 12)):  # uneven micro-batches
        total = total + agg_loss(
            param[rows] * weights[rows],
            mask[rows],
            mode,
            batch_num_tokens=num_tokens,
            global_batch_size=num_seqs,
        )
        naive = naive + agg_loss(param[rows] * weights[rows], mask[rows], mode)
    (acc_grad,) = torch.autograd.grad(total, param)
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc_grad, full_grad, rtol=1e-12, atol=1e-12)
    # normalising each micro-batch by itself is not the same loss (why the arguments exist)
    assert abs(naive.item() / 3 - full.item()) > 1e-3


# ------------------------------------------------------------------------------------ policy losses


def test_policy_loss_config_from_actor_section():
    actor = OmegaConf.structured(schema.ActorConfig)
    actor.clip_ratio_high = 0.28
    actor.clip_ratio_c = 10.0
    actor.aspo_dual_clip = 4.0
    actor.archer.token_entropy_quantile = 0.7
    actor.archer.high_entropy_clip_ratio_low = 0.5
    actor.archer.high_entropy_kl_scale = 0.25
    cfg = PolicyLossConfig.from_actor(actor)
    assert cfg == PolicyLossConfig(
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=10.0,
        aspo_dual_clip=4.0,
        token_entropy_quantile=0.7,
        low_entropy_clip_ratio_low=0.2,
        low_entropy_clip_ratio_high=0.2,
        high_entropy_clip_ratio_low=0.5,
        high_entropy_clip_ratio_high=0.4,
        high_entropy_kl_scale=0.25,
    )
    # the dataclass defaults agree with the schema defaults
    assert PolicyLossConfig.from_actor(schema.ActorConfig()) == PolicyLossConfig()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_ratio_c": 1.0},
        {"aspo_dual_clip": 0.5},
        {"token_entropy_quantile": 1.0},
        {"clip_ratio_low": -0.1},
    ],
)
def test_policy_loss_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        PolicyLossConfig(**kwargs)


def run_loss(name, ratios, advantages, entropy=None, config=None, mask=None):
    """One response; seq-mean-token-sum makes the loss the plain sum of token losses, so the
    gradient w.r.t. each token's log-prob is that token's own dL/dlog pi."""
    old = torch.full((1, len(ratios)), -1.0, dtype=torch.float64)
    logp = (old + torch.log(row(ratios))).requires_grad_(True)
    adv = row(advantages)
    mask = torch.ones_like(adv) if mask is None else row(mask)
    out = get_policy_loss(name)(
        old,
        logp,
        adv,
        mask,
        loss_agg_mode="seq-mean-token-sum",
        config=config or PolicyLossConfig(),
        entropy=None if entropy is None else row(entropy),
    )
    (grad,) = torch.autograd.grad(out.loss, logp)
    return out, grad[0]


def test_vanilla_clip_dual_clip_and_gradients():
    cfg = PolicyLossConfig(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    ratios = [1.1, 1.25, 1.5, 0.5, 2.0, 5.0, 0.9]
    advs = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.0]
    out, grad = run_loss("vanilla", ratios, advs, config=cfg)
    # token losses: -A r unclipped; clipped at 1.28 (A>0, clip-higher keeps 1.25 free),
    # at 0.8 (A<0), and the dual clip caps A<0, r=5 at -A*c = 3
    token_losses = [-1.1, -1.25, -1.28, 0.8, 2.0, 3.0, 0.0]
    assert out.loss.item() == pytest.approx(sum(token_losses))
    expected_grad = [-1.1, -1.25, 0.0, 0.0, 2.0, 0.0, 0.0]
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64))
    assert out.metrics["pg_clipfrac"] == pytest.approx(2 / 7)  # the 1.5 and 0.5 tokens
    assert out.metrics["pg_clipfrac_lower"] == pytest.approx(1 / 7)  # the dual-clipped token
    assert out.metrics["ppo_kl"] == pytest.approx(-float(np.mean(np.log(ratios))))
    assert out.kl_token_scale is None


def test_vanilla_ignores_masked_tokens():
    out, grad = run_loss("vanilla", [1.5, 1.0, 0.1], [1.0, 1.0, 1.0], mask=[1, 1, 0])
    assert out.loss.item() == pytest.approx(-1.2 - 1.0)
    assert grad[2].item() == 0.0
    assert out.metrics["pg_clipfrac"] == pytest.approx(0.5)


def test_masked_quantile_matches_torch_nanquantile():
    g = torch.Generator().manual_seed(2)
    values = torch.rand(6, 9, generator=g)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 1, 2, 5, 7, 0])[:, None]
    for q in (0.0, 0.3, 0.8, 1.0):
        ours = masked_quantile(values, mask, q)
        ref = torch.nanquantile(torch.where(mask, values, torch.nan), q, dim=-1, keepdim=True)
        torch.testing.assert_close(ours, ref, equal_nan=True)
    assert torch.isnan(masked_quantile(values, mask, 0.5)[5]).item()


def test_archer_token_split_on_hand_made_entropy():
    entropy = torch.tensor(
        [
            [0.1, 0.9, 0.2, 0.3, 1.0, 0.4, 0.5, 0.6, 0.7, 0.8],  # 10 valid tokens
            [5.0, 1.0, 3.0, 2.0, 4.0, 99.0, 99.0, 99.0, 99.0, 99.0],  # 5 valid, huge padding
        ]
    )
    mask = torch.tensor([[1] * 10, [1] * 5 + [0] * 5])
    high = high_entropy_mask(entropy, mask, 0.8)
    # row 0: q80 of 0.1..1.0 is 0.82 -> 0.9 and 1.0; row 1: q80 of 1..5 is 4.2 -> only 5.0
    expected = torch.zeros(2, 10, dtype=torch.bool)
    expected[0, [1, 4]] = True
    expected[1, 0] = True
    assert torch.equal(high, expected)


def test_archer_uses_per_split_clips_and_kl_scale():
    cfg = PolicyLossConfig(
        clip_ratio_low=0.2,
        clip_ratio_high=0.2,
        low_entropy_clip_ratio_low=0.2,
        low_entropy_clip_ratio_high=0.2,
        high_entropy_clip_ratio_low=0.5,
        high_entropy_clip_ratio_high=0.4,
        high_entropy_kl_scale=0.0,
        token_entropy_quantile=0.5,
    )
    # entropy splits tokens {0, 1} low, {2, 3} high (q50 of [1,2,3,4] = 2.5)
    ratios = [1.3, 0.6, 1.3, 0.6]
    advs = [1.0, -1.0, 1.0, -1.0]
    out, grad = run_loss("archer", ratios, advs, entropy=[1.0, 2.0, 3.0, 4.0], config=cfg)
    # low-entropy tokens clip at [0.8, 1.2]; high-entropy ones at [0.5, 1.4] and stay free here
    assert out.loss.item() == pytest.approx(-1.2 + 0.8 - 1.3 + 0.6)
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, -1.3, 0.6], dtype=torch.float64))
    torch.testing.assert_close(out.kl_token_scale, row([1.0, 1.0, 0.0, 0.0]))
    assert out.metrics["high_entropy_frac"] == pytest.approx(0.5)
    assert out.metrics["pg_clipfrac"] == pytest.approx(0.5)
    assert out.metrics["pg_clipfrac_low_entropy"] == pytest.approx(1.0)
    assert out.metrics["pg_clipfrac_high_entropy"] == pytest.approx(0.0)


def test_archer_keeps_the_dual_clip():
    cfg = PolicyLossConfig(clip_ratio_c=3.0, token_entropy_quantile=0.5)
    out, grad = run_loss("archer", [5.0, 5.0], [-1.0, -1.0], entropy=[1.0, 2.0], config=cfg)
    assert out.loss.item() == pytest.approx(6.0)
    assert torch.all(grad == 0)
    assert out.metrics["pg_clipfrac_lower"] == pytest.approx(1.0)


def test_archer_with_equal_ranges_equals_vanilla():
    g = torch.Generator().manual_seed(9)
    old = torch.randn(4, 6, generator=g)
    new = old + 0.3 * torch.randn(4, 6, generator=g)
    adv = torch.randn(4, 6, generator=g)
    mask = torch.ones(4, 6)
    mask[1, 3:] = 0
    cfg = PolicyLossConfig(high_entropy_clip_ratio_low=0.2, high_entropy_clip_ratio_high=0.2)
    ent = torch.rand(4, 6, generator=g)
    a = get_policy_loss("archer")(old, new, adv, mask, config=cfg, entropy=ent)
    v = get_policy_loss("vanilla")(old, new, adv, mask, config=cfg)
    torch.testing.assert_close(a.loss, v.loss)
    for key in ("pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"):
        assert a.metrics[key] == pytest.approx(v.metrics[key])


@pytest.mark.parametrize("name", ["archer", "aspo"])
def test_entropy_split_losses_require_entropy(name):
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="entropy"):
        get_policy_loss(name)(x, x, x, torch.ones(1, 3), config=PolicyLossConfig())


def test_aspo_forward_and_flipped_gradient_by_hand():
    cfg = PolicyLossConfig(
        low_entropy_clip_ratio_low=0.2,
        low_entropy_clip_ratio_high=0.2,
        high_entropy_clip_ratio_low=0.4,
        high_entropy_clip_ratio_high=0.4,
        clip_ratio_c=3.0,
        aspo_dual_clip=3.0,
        token_entropy_quantile=0.5,
    )
    ratios = [1.1, 0.5, 0.25, 1.5, 0.8, 2.0, 0.5, 4.0]
    advs = [1.0, 1.0, 1.0, 1.0, 2.0, -1.0, -1.0, -1.0]
    entropy = [0.0] * 8  # all tied -> all low-entropy: clip ranges 0.2 / 0.2
    out, grad = run_loss("aspo", ratios, advs, entropy=entropy, config=cfg)
    expected_grad = [
        -1 / 1.1,  # A>0: flipped weight 1/r
        -1 / 0.5,  # A>0, r<1: weight 2, larger than vanilla's 0.5
        -3.0,  # A>0, 1/r = 4 > 3: soft dual clip keeps weight 3
        0.0,  # A>0, r > 1.2: clipped
        -2 / 0.8,  # A=2: -A/r
        2.0,  # A<0: -A r, as PPO
        0.0,  # A<0, r < 0.8: clipped
        3.0,  # A<0, r > c: soft dual clip keeps weight c
    ]
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64))
    token_losses = [-1 / 1.1, -2.0, -3.0, -1 / 1.2, -2 / 0.8, 2.0, 0.8, 3.0]
    assert out.loss.item() == pytest.approx(sum(token_losses))
    assert out.metrics["pg_clipfrac"] == pytest.approx(2 / 8)
    assert out.metrics["pg_clipfrac_dual_pos"] == pytest.approx(1 / 8)
    assert out.metrics["pg_clipfrac_lower"] == pytest.approx(1 / 8)
    # the gradient moves log pi the right way: up for A>0, down for A<0 (descent is -grad)
    assert all(g <= 0 for g, a in zip(expected_grad, advs) if a > 0)
    assert all(g >= 0 for g, a in zip(expected_grad, advs) if a < 0)


def test_aspo_high_entropy_tokens_use_wider_clips_and_kl_scale():
    cfg = PolicyLossConfig(token_entropy_quantile=0.5, high_entropy_kl_scale=0.5)
    # r = 1.3: clipped for the low-entropy token (1.2), free for the high-entropy one (1.4)
    out, grad = run_loss("aspo", [1.3, 1.3], [1.0, 1.0], entropy=[0.1, 2.0], config=cfg)
    torch.testing.assert_close(grad, torch.tensor([0.0, -1 / 1.3], dtype=torch.float64))
    torch.testing.assert_close(out.kl_token_scale, row([1.0, 0.5]))


def test_aspo_gradient_matches_case_analysis_on_random_tokens():
    g = torch.Generator().manual_seed(21)
    B, T = 6, 40
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    log_ratio = torch.randn(B, T, generator=g, dtype=torch.float64) * 0.8
    logp = (old + log_ratio).requires_grad_(True)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    ent = torch.rand(B, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[2, 25:] = 0
    cfg = PolicyLossConfig(clip_ratio_c=2.5, aspo_dual_clip=3.0)
    out = get_policy_loss("aspo")(old, logp, adv, mask, loss_agg_mode="token-mean", config=cfg, entropy=ent)
    (grad,) = torch.autograd.grad(out.loss, logp)

    r = torch.exp(log_ratio)
    high = high_entropy_mask(ent, mask, cfg.token_entropy_quantile)
    eps_l = torch.where(high, 0.4, 0.2).double()
    eps_h = torch.where(high, 0.4, 0.2).double()
    weight = torch.zeros_like(r)  # dL/dlog pi = -A * weight
    pos = adv >= 0
    weight = torch.where(pos & (r < 1 + eps_h), 1 / r, weight)
    weight = torch.where(pos & (r < 1 / cfg.aspo_dual_clip), torch.full_like(r, cfg.aspo_dual_clip), weight)
    neg = adv < 0
    weight = torch.where(neg & (r > 1 - eps_l), r, weight)
    weight = torch.where(neg & (r > cfg.clip_ratio_c), torch.full_like(r, cfg.clip_ratio_c), weight)
    expected = -adv * weight * mask / mask.sum()
    torch.testing.assert_close(grad, expected)
    # the sample exercises every branch
    assert (pos & (r < 1 / 3)).any() and (neg & (r > 2.5)).any() and (pos & (r > 1.4)).any()


@pytest.mark.parametrize("name", schema.POLICY_LOSSES)
def test_every_loss_honours_agg_mode_and_denominators(name):
    g = torch.Generator().manual_seed(4)
    old = torch.randn(3, 5, generator=g)
    new = old + 0.2 * torch.randn(3, 5, generator=g)
    adv = torch.randn(3, 5, generator=g)
    ent = torch.rand(3, 5, generator=g)
    mask = torch.ones(3, 5)
    mask[0, 2:] = 0
    fn = get_policy_loss(name)
    cfg = PolicyLossConfig()
    base = fn(old, new, adv, mask, config=cfg, entropy=ent).loss
    scaled = fn(old, new, adv, mask, config=cfg, entropy=ent, batch_num_tokens=2 * mask.sum()).loss
    torch.testing.assert_close(scaled, base / 2)
    seq = fn(old, new, adv, mask, config=cfg, entropy=ent, loss_agg_mode="seq-mean-token-sum").loss
    seq_half = fn(
        old, new, adv, mask, config=cfg, entropy=ent, loss_agg_mode="seq-mean-token-sum", global_batch_size=6
    ).loss
    torch.testing.assert_close(seq_half, seq / 2)
    out = fn(old, new, adv, mask, config=cfg, entropy=ent)
    assert {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"} <= set(out.metrics)
    assert all(isinstance(v, float) for v in out.metrics.values())


# ------------------------------------------------------------------------------------------ logprobs


def naive_logprobs_entropy(logits, labels, temperature):
    z = logits.double() / temperature
    p = torch.softmax(z, dim=-1)
    logp = torch.log(p)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1), -(p * logp).sum(-1)


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_and_entropy_match_naive_reference(chunk_size, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 50, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 50, (3, 5), generator=g)
    lp, ent = logprobs_and_entropy(logits, labels, temperature=temperature, chunk_size=chunk_size)
    ref_lp, ref_ent = naive_logprobs_entropy(logits, labels, temperature)
    assert lp.shape == ent.shape == (3, 5)
    torch.testing.assert_close(lp, ref_lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_gradients_flow_through_log_probs_and_entropy(chunk_size):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 6, 11, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    w_lp = torch.randn(2, 6, generator=g, dtype=torch.float64)
    w_ent = torch.randn(2, 6, generator=g, dtype=torch.float64)

    lp, ent = logprobs_and_entropy(logits, labels, temperature=0.7, chunk_size=chunk_size)
    (grad,) = torch.autograd.grad((w_lp * lp).sum() + (w_ent * ent).sum(), logits)
    ref_lp, ref_ent = naive_logprobs_entropy(logits, labels, 0.7)
    (ref_grad,) = torch.autograd.grad((w_lp * ref_lp).sum() + (w_ent * ref_ent).sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert grad.abs().sum() > 0

    # log-prob alone: d log p_y / d z = onehot(y) - p
    lp, _ = logprobs_and_entropy(logits, labels, temperature=0.7, chunk_size=chunk_size)
    (grad_lp,) = torch.autograd.grad(lp.sum(), logits)
    p = torch.softmax(logits.detach() / 0.7, dim=-1)
    onehot = torch.nn.functional.one_hot(labels, 11).double()
    torch.testing.assert_close(grad_lp, (onehot - p) / 0.7)


def test_chunked_function_passes_gradcheck():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (7,), generator=g)

    def fn(x):
        return logprobs_and_entropy(x, labels, temperature=1.3, chunk_size=3)

    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_without_entropy_and_wrappers(chunk_size):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 8, generator=g)
    labels = torch.randint(0, 8, (2, 3), generator=g)
    lp, ent = logprobs_and_entropy(logits, labels, with_entropy=False, chunk_size=chunk_size)
    assert ent is None
    ref_lp, ref_ent = naive_logprobs_entropy(logits, labels, 1.0)
    torch.testing.assert_close(lp, ref_lp.float())
    torch.testing.assert_close(logprobs_from_logits(logits, labels, chunk_size=chunk_size), ref_lp.float())
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=chunk_size), ref_ent.float())
    # a uniform distribution has entropy log V
    flat = entropy_from_logits(torch.zeros(4, 8), chunk_size=chunk_size)
    torch.testing.assert_close(flat, torch.full((4,), math.log(8)))


def test_bf16_logits_are_upcast():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 4, 300, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 300, (2, 4), generator=g)
    for chunk in (None, 3):
        lp, ent = logprobs_and_entropy(logits, labels, chunk_size=chunk)
        assert lp.dtype == ent.dtype == torch.float32
        ref_lp, ref_ent = naive_logprobs_entropy(logits.double(), labels, 1.0)
        torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-5, atol=1e-5)
    leaf = logits.clone().requires_grad_(True)
    lp, ent = logprobs_and_entropy(leaf, labels, chunk_size=3)
    (lp.sum() + ent.sum()).backward()
    assert leaf.grad.dtype == torch.bfloat16


def test_logprobs_argument_errors():
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), temperature=0)
    with pytest.raises(ValueError, match="match"):
        logprobs_and_entropy(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        logprobs_and_entropy(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), chunk_size=0)


# ---------------------------------------------------------------------------------- sampling filters


def test_overlong_penalty_values():
    lengths = torch.tensor([0, 10, 16, 17, 18, 20])
    pen = overlong_penalty(lengths, max_response_length=20, buffer_len=4, penalty_factor=1.0)
    torch.testing.assert_close(pen, torch.tensor([0.0, 0.0, 0.0, -0.25, -0.5, -1.0]))
    pen2 = overlong_penalty(lengths, max_response_length=20, buffer_len=4, penalty_factor=2.0)
    torch.testing.assert_close(pen2, 2 * pen)


@pytest.mark.parametrize("buffer_len", [0, 21])
def test_overlong_penalty_rejects_bad_buffers(buffer_len):
    with pytest.raises(ConfigError, match="overlong_buffer.len"):
        overlong_penalty(torch.tensor([5]), max_response_length=20, buffer_len=buffer_len, penalty_factor=1.0)


def test_informative_groups():
    ids = ["a", "a", "b", "b", "c", "d", "d", "d"]
    vals = [1, 0, 1, 1, 0.5, 0.2, 0.2, 0.3]
    assert informative_groups(ids, vals) == ["a", "d"]  # in order of first appearance
    assert set(informative_groups(np.array(ids, dtype=object), torch.tensor(vals))) == {"a", "d"}
    with pytest.raises(ValueError):
        informative_groups(ids, vals[:-1])


def test_group_accumulator_fills_across_rounds():
    acc = GroupAccumulator()
    target = 3
    assert acc.should_continue(target, max_rounds=4)
    # round 1: groups p0 (mixed), p1 (all 1), interleaved sample order
    kept = acc.add(["G0", "G1"], ["p0", "p1", "p0", "p1"], [1, 1, 0, 1])
    assert kept == 1 and len(acc) == 1 and acc.rounds == 1
    # round 2: all constant
    assert acc.add(["G2", "G3"], ["p2", "p2", "p3", "p3"], [0, 0, 1, 1]) == 0
    assert acc.should_continue(target, max_rounds=4) and not acc.full(target)
    # round 3: three informative groups -> 4 in total, one too many
    acc.add(["G4", "G5", "G6"], ["x", "x", "y", "y", "z", "z"], [0, 1, 1, 0, 0.5, 1])
    assert acc.full(target) and not acc.should_continue(target, max_rounds=0)
    taken = acc.take(target)
    assert taken == ["G0", "G4", "G5"]
    assert acc.stats() == {"rounds": 3.0, "kept_groups": 4.0, "dropped_groups": 3.0, "surplus_groups": 1.0}
    assert len(acc) == 0


def test_group_accumulator_round_cap_and_shortfall():
    acc = GroupAccumulator()
    for _ in range(2):
        acc.add(["A", "B"], [0, 0, 1, 1], [1, 0, 1, 1])
    assert not acc.full(5)
    assert not acc.should_continue(5, max_rounds=2)  # capped
    assert acc.should_continue(5, max_rounds=0)  # 0 = no cap
    with pytest.raises(ValueError, match="only 2"):
        acc.take(5)
    assert acc.take(len(acc)) == ["A", "A"]


def test_group_accumulator_rejects_misaligned_payloads():
    with pytest.raises(ValueError, match="payload"):
        GroupAccumulator().add(["only one"], ["a", "b"], [0, 1])
