"""archer's verl plugin: what it registers, by which route verl loads it, and that a failure is
loud. The route tests run `import verl` in fresh interpreters (verl's plugin discovery happens at
import), with `VERL_USE_EXTERNAL_PLUGINS` choosing the route."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

import torch  # noqa: E402

pytestmark = pytest.mark.verl

PROBE = """
import json, sys, verl
heavy = ("verl.trainer.ppo.core_algos", "verl.workers.engine_workers", "verl.trainer.ppo.v1.trainer_base",
         "archer.core.engines.verl.trainer", "archer.core.engines.verl.losses")
after_import_verl = sorted(m for m in heavy if m in sys.modules)
plugin_loaded = "archer.core.engines.verl.plugin" in sys.modules
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
trainer_by_plugin = "archer_sync" in TRAINER_REGISTRY
import archer.core.engines.verl.plugin as plugin
plugin.register_trainer()
print("RESULT " + json.dumps({
    "plugin_loaded": plugin_loaded,
    "after_import_verl": after_import_verl,
    "losses": sorted(n for n in ("aepo", "archer", "aspo") if n in core_algos.POLICY_LOSS_REGISTRY),
    "estimators": sorted(n for n in core_algos.ADV_ESTIMATOR_REGISTRY if n.startswith("archer_")),
    "trainer_by_plugin": trainer_by_plugin,
    "trainer": "archer_sync" in TRAINER_REGISTRY,
}))
"""
EVERYTHING = {
    "plugin_loaded": True,
    # `import verl` loads the plugin but neither verl's registries nor its trainer stack: the
    # losses register when core_algos loads, the trainer only where one is built
    "after_import_verl": [],
    "losses": ["aepo", "archer", "aspo"],
    "estimators": ["archer_grpo", "archer_reinforce_plus_plus_baseline", "archer_rloo"],
    "trainer_by_plugin": False,
    "trainer": True,
}


def _probe(code: str, **env: str) -> tuple[dict | None, subprocess.CompletedProcess]:
    full = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VERL_USE_EXTERNAL_MODULES", "VERL_USE_EXTERNAL_PLUGINS")
    }
    full.update(env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    return (json.loads(line[7:]) if line else None), r


def test_entry_point_alone_registers_everything():
    from archer.core.engines.verl.plugin import entry_point_installed

    assert entry_point_installed(), "pip install -e . did not declare the verl.plugins entry point"
    result, r = _probe(PROBE, VERL_USE_EXTERNAL_PLUGINS="archer")
    assert result == EVERYTHING, r.stderr[-2000:]


def test_env_var_alone_registers_everything():
    result, r = _probe(
        PROBE, VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="archer.core.engines.verl.plugin"
    )
    assert result == EVERYTHING, r.stderr[-2000:]


def test_without_a_route_nothing_is_registered_and_a_failure_is_loud():
    """Control for the two tests above, then a registration that fails (verl already has a foreign
    loss named 'archer'): the error is printed at ERROR level and status() reports it."""
    code = """
import json
from verl.trainer.ppo import core_algos
before = "archer_grpo" in core_algos.ADV_ESTIMATOR_REGISTRY
core_algos.register_policy_loss("archer")(lambda *a, **k: None)
import archer.core.engines.verl.plugin as plugin
st = plugin.status()
print("RESULT " + json.dumps({"before": before, "registered": st["registered"], "error": st["error"]}))
"""
    result, r = _probe(code, VERL_USE_EXTERNAL_PLUGINS="none")
    assert result is not None, r.stderr[-2000:]
    assert result["before"] is False  # neither route active: verl alone registers nothing of archer's
    assert result["registered"] is False and "already has a policy loss named 'archer'" in result["error"]
    assert "ERROR" in r.stderr and "archer's verl plugin failed to register" in r.stderr


def test_adapted_losses_equal_archer_losses_with_verl_normalisers():
    """verl's signature in, archer's loss out: Σ/N_global·dp_size, entropy and knobs from the wrapper."""
    from verl.workers.config import ActorConfig

    from archer.core.algorithms import PolicyLossConfig, get_policy_loss
    from archer.core.engines.verl.losses import loss_inputs, verl_policy_loss

    g = torch.Generator().manual_seed(0)
    B, T = 6, 7
    mask = (torch.arange(T)[None] < torch.randint(2, T + 1, (B,), generator=g)[:, None]).float()
    old = -torch.rand(B, T, generator=g) * 3
    new = (old + 0.4 * torch.randn(B, T, generator=g)).requires_grad_()
    adv = torch.randn(B, T, generator=g)
    ent = torch.rand(B, T, generator=g) * 2
    cfg = ActorConfig(
        strategy="fsdp",
        ppo_micro_batch_size_per_gpu=1,
        rollout_n=4,
        clip_ratio_low=0.1,
        clip_ratio_high=0.3,
        clip_ratio_c=4.0,
    )
    cfg.global_batch_info.update(dp_size=2, batch_num_tokens=30, global_batch_size=16)
    knobs = {
        "token_entropy_quantile": 0.6,
        "high_entropy_clip_ratio_high": 0.5,
        "aspo_dual_clip": 2.5,
        "aepo_entropy_advantage": 0.3,
    }
    for name in ("archer", "aspo", "aepo"):
        fn = verl_policy_loss(name)
        with pytest.raises(RuntimeError, match="archer's training worker"):
            fn(old, new, adv, mask, "token-mean", cfg)
        with loss_inputs(ent, knobs) as inputs:
            loss, metrics = fn(old, new, adv, mask, "token-mean", cfg)
        want = get_policy_loss(name)(
            old,
            new,
            adv,
            mask,
            loss_agg_mode="token-mean",
            entropy=ent,
            config=PolicyLossConfig(
                clip_ratio_low=0.1,
                clip_ratio_high=0.3,
                clip_ratio_c=4.0,
                token_entropy_quantile=0.6,
                high_entropy_clip_ratio_high=0.5,
                aspo_dual_clip=2.5,
                aepo_entropy_advantage=0.3,
            ),
            batch_num_tokens=15.0,
        )  # 30 tokens over 2 ranks
        torch.testing.assert_close(loss, want.loss, rtol=0, atol=1e-7)
        if name == "aepo":  # entropy-aware advantage (α = 0.3) and kept-gradient clipping; no KL split
            assert inputs.kl_token_scale is None and "actor/pg_clipfrac_kept_grad" in metrics
        else:
            assert inputs.kl_token_scale is not None and "actor/high_entropy_frac" in metrics


def test_adapted_estimators_equal_archer_estimators():
    from archer.core.algorithms import get_adv_estimator
    from archer.core.engines.verl.estimators import all_estimators

    g = torch.Generator().manual_seed(1)
    rewards = torch.zeros(8, 5)
    rewards[:, -1] = torch.randint(0, 2, (8,), generator=g).float()
    mask = torch.ones(8, 5)
    index = np.array(["a"] * 4 + ["b"] * 3 + ["c"], dtype=object)  # "c" is a singleton: archer gives 0
    for name, fn in all_estimators().items():
        ours, _ = fn(
            token_level_rewards=rewards,
            response_mask=mask,
            index=index,
            config={"norm_adv_by_std_in_grpo": False},
        )
        want, _ = get_adv_estimator(name.removeprefix("archer_"))(
            rewards, mask, index, norm_adv_by_std_in_grpo=False
        )
        torch.testing.assert_close(ours, want)
        assert torch.all(ours[7] == 0)
