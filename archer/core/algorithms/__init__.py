"""RL algorithms shared by both engines: advantages, policy losses, loss aggregation, KL, log-probs
and DAPO sampling filters. Pure torch (no verl import), selected by name from the config; the
verl-compatible parts are cross-checked against verl 0.9.1 in tests/test_algorithms_vs_verl.py.
"""

from archer.core.algorithms.advantages import (
    ADV_ESTIMATOR_REGISTRY,
    available_adv_estimators,
    get_adv_estimator,
    grpo,
    register_adv_estimator,
    reinforce_plus_plus_baseline,
    rloo,
)
from archer.core.algorithms.aepo import entropy_aware_advantages  # also registers the "aepo" loss
from archer.core.algorithms.aggregation import (
    LOSS_AGG_MODES,
    agg_loss,
    masked_mean,
    masked_sum,
    masked_whiten,
)
from archer.core.algorithms.kl import KL_TYPES, kl_penalty
from archer.core.algorithms.logprobs import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits
from archer.core.algorithms.policy_losses import (
    POLICY_LOSS_REGISTRY,
    PolicyLossConfig,
    PolicyLossOutput,
    available_policy_losses,
    get_policy_loss,
    high_entropy_mask,
    loss_needs_entropy,
    masked_quantile,
    register_policy_loss,
)
from archer.core.algorithms.sampling_filters import GroupAccumulator, informative_groups, overlong_penalty

__all__ = [
    "ADV_ESTIMATOR_REGISTRY",
    "KL_TYPES",
    "LOSS_AGG_MODES",
    "POLICY_LOSS_REGISTRY",
    "GroupAccumulator",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "agg_loss",
    "available_adv_estimators",
    "available_policy_losses",
    "entropy_aware_advantages",
    "entropy_from_logits",
    "get_adv_estimator",
    "get_policy_loss",
    "grpo",
    "high_entropy_mask",
    "informative_groups",
    "kl_penalty",
    "loss_needs_entropy",
    "logprobs_and_entropy",
    "logprobs_from_logits",
    "masked_mean",
    "masked_quantile",
    "masked_sum",
    "masked_whiten",
    "overlong_penalty",
    "register_adv_estimator",
    "register_policy_loss",
    "reinforce_plus_plus_baseline",
    "rloo",
]
