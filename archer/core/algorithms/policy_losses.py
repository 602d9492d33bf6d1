"""Policy-gradient losses, looked up by name like verl's `core_algos` registry.

Every loss has one signature so the engines can call any of them:

    fn(old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode="token-mean",
       config: PolicyLossConfig, entropy=None, batch_num_tokens=None, global_batch_size=None)
       -> PolicyLossOutput

All tensors are [B, T]. `entropy` is the current policy's per-token entropy (only the entropy-split
losses need it; it is detached here). `batch_num_tokens` / `global_batch_size` are forwarded to
`agg_loss` for exact gradient accumulation. `PolicyLossOutput.kl_token_scale` is a per-token
multiplier the engine applies to the KL-loss term before aggregating it (None means 1 everywhere).

Losses:
- vanilla: PPO clip with separate low/high ranges (DAPO clip-higher) and dual clip, identical to
  verl 0.9.1's `compute_policy_loss_vanilla`.
- archer:  Archer's dual-token constraints (arXiv 2507.15778): per-response entropy split, wider
  clips and a scaled KL on the high-entropy ("fork") tokens.
- aspo:    Archer2.0's ASPO (arXiv 2510.06062): the archer split plus a flipped importance weight
  for positive-advantage tokens and soft dual clips; see `aspo` for the exact forward and gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from archer.core.algorithms.aggregation import Number, agg_loss, masked_mean
from archer.errors import ConfigError

# ratio = exp(clamp(log_prob - old_log_prob, -20, 20)), as in verl, so exp() can never overflow.
_LOG_RATIO_CLAMP = 20.0


@dataclass
class PolicyLossConfig:
    """The numbers the losses read; build it from the config with `PolicyLossConfig.from_actor`."""

    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    aspo_dual_clip: float = 3.0
    token_entropy_quantile: float = 0.8
    low_entropy_clip_ratio_low: float = 0.2
    low_entropy_clip_ratio_high: float = 0.2
    high_entropy_clip_ratio_low: float = 0.4
    high_entropy_clip_ratio_high: float = 0.4
    high_entropy_kl_scale: float = 0.0
    aepo_entropy_advantage: float = 0.0  # AEPO's alpha in A·(1 + alpha·z(H)); read by the `aepo` loss

    def __post_init__(self) -> None:
        # The same bounds as the schema, so a hand-built config fails as clearly as a bad preset.
        if self.clip_ratio_c <= 1.0:
            raise ConfigError(f"actor.clip_ratio_c must be > 1, got {self.clip_ratio_c}")
        if self.aspo_dual_clip <= 1.0:
            raise ConfigError(f"actor.aspo_dual_clip must be > 1, got {self.aspo_dual_clip}")
        if not 0.0 < self.token_entropy_quantile < 1.0:
            raise ConfigError(
                f"actor.archer.token_entropy_quantile must be in (0, 1), got {self.token_entropy_quantile}"
            )
        for name in (
            "clip_ratio_low",
            "clip_ratio_high",
            "low_entropy_clip_ratio_low",
            "low_entropy_clip_ratio_high",
            "high_entropy_clip_ratio_low",
            "high_entropy_clip_ratio_high",
            "high_entropy_kl_scale",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_actor(cls, actor_cfg: Any) -> PolicyLossConfig:
        """Build from the `actor` config section (an OmegaConf node or the `ActorConfig` dataclass)."""
        archer = actor_cfg.archer
        return cls(
            clip_ratio_low=float(actor_cfg.clip_ratio_low),
            clip_ratio_high=float(actor_cfg.clip_ratio_high),
            clip_ratio_c=float(actor_cfg.clip_ratio_c),
            aspo_dual_clip=float(actor_cfg.aspo_dual_clip),
            token_entropy_quantile=float(archer.token_entropy_quantile),
            low_entropy_clip_ratio_low=float(archer.low_entropy_clip_ratio_low),
            low_entropy_clip_ratio_high=float(archer.low_entropy_clip_ratio_high),
            high_entropy_clip_ratio_low=float(archer.high_entropy_clip_ratio_low),
            high_entropy_clip_ratio_high=float(archer.high_entropy_clip_ratio_high),
            high_entropy_kl_scale=float(archer.high_entropy_kl_scale),
            aepo_entropy_advantage=float(getattr(actor_cfg, "aepo_entropy_advantage", 0.0)),
        )


@dataclass
class PolicyLossOutput:
    """A loss's result: the differentiable scalar, float metrics, and the per-token KL multiplier."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    kl_token_scale: torch.Tensor | None = None


PolicyLossFn = Callable[..., PolicyLossOutput]

POLICY_LOSS_REGISTRY: dict[str, PolicyLossFn] = {}
# Losses that read the per-token entropy of the training forward (declared at registration).
_NEEDS_ENTROPY: set[str] = set()


def register_policy_loss(name: str, *, needs_entropy: bool = False) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Register a loss under `name`; registering a different function twice is a bug.

    `needs_entropy`: the loss reads the entropy of the training forward (`inputs.entropy`), so
    every engine computes it in the update (the one place this fact is stated)."""

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        existing = POLICY_LOSS_REGISTRY.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"policy loss {name!r} is already registered to {existing.__qualname__}")
        POLICY_LOSS_REGISTRY[name] = fn
        if needs_entropy:
            _NEEDS_ENTROPY.add(name)
        else:
            _NEEDS_ENTROPY.discard(name)
        return fn

    return decorator


def loss_needs_entropy(name: str) -> bool:
    """Whether the registered loss `name` reads the training forward's entropy."""
    get_policy_loss(name)  # an unknown name is a config error
    return name in _NEEDS_ENTROPY


def get_policy_loss(name: str) -> PolicyLossFn:
    """The loss registered as `name`; an unknown name is a config error that lists the known ones."""
    try:
        return POLICY_LOSS_REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(POLICY_LOSS_REGISTRY))
        raise ConfigError(
            f"unknown policy loss {name!r}; known: {known}", hint="set actor.policy_loss to one of them"
        ) from None


def available_policy_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(POLICY_LOSS_REGISTRY)


# --------------------------------------------------------------------------------------------------
# shared pieces


def _log_ratio(old_log_prob: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    return torch.clamp(log_prob - old_log_prob, min=-_LOG_RATIO_CLAMP, max=_LOG_RATIO_CLAMP)


def masked_quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-quantile of `values` over the masked entries, shape [B, 1]; NaN for empty rows.

    Same result as `torch.nanquantile(where(mask, values, nan), q, dim=-1, keepdim=True)` (linear
    interpolation), but built from a sort so it has no input-size limit (nanquantile refuses
    tensors above 2**24 elements, which a long-response batch reaches).
    """
    v = values.detach().float()
    valid = mask.bool()
    filled = torch.where(valid, v, torch.full_like(v, float("inf")))
    ordered, _ = torch.sort(filled, dim=-1)
    n = valid.sum(dim=-1, keepdim=True)
    pos = q * torch.clamp(n - 1, min=0).to(v.dtype)
    lo = torch.floor(pos).long()
    hi = torch.ceil(pos).long()
    below = ordered.gather(-1, lo)
    above = ordered.gather(-1, hi)
    out = torch.lerp(below, above, pos - lo.to(v.dtype))
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def high_entropy_mask(entropy: torch.Tensor, response_mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """True on valid tokens whose entropy is above their own response's `quantile` (Archer's forks).

    The threshold is per response, over its valid tokens only; ties with the threshold count as
    low-entropy, as in Archer's code.
    """
    threshold = masked_quantile(entropy, response_mask, quantile)
    return (entropy.detach().float() > threshold) & response_mask.bool()


def _require_entropy(entropy: torch.Tensor | None, loss: str, like: torch.Tensor) -> torch.Tensor:
    if entropy is None:
        raise ValueError(
            f"policy loss {loss!r} splits tokens by entropy, so it needs `entropy` [B, T]: "
            "compute it in the actor forward (logprobs_and_entropy(..., with_entropy=True))"
        )
    if entropy.shape != like.shape:
        raise ValueError(f"entropy has shape {tuple(entropy.shape)}, expected {tuple(like.shape)}")
    return entropy


def _ppo_clip(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float | torch.Tensor,
    clip_high: float | torch.Tensor,
    clip_ratio_c: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dual-clip PPO token losses and the (clipped, dual-clipped) indicators, in verl's exact ops."""
    pg_losses1 = -advantages * ratio
    if isinstance(clip_low, torch.Tensor):
        clipped_ratio = torch.minimum(torch.maximum(ratio, 1 - clip_low), 1 + clip_high)
    else:
        clipped_ratio = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg_losses2 = -advantages * clipped_ratio
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    clipped = torch.gt(pg_losses2, pg_losses1)

    # Dual clip (arXiv 1912.09729): for A < 0 the loss is capped at -A * c, so a huge ratio on a
    # bad token cannot dominate the batch.
    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    dual_clipped = torch.gt(clip_pg_losses1, pg_losses3) & (advantages < 0)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return pg_losses, clipped, dual_clipped


def _frac(indicator: torch.Tensor, mask: torch.Tensor) -> float:
    return masked_mean(indicator.float(), mask.float()).item()


def _split_metrics(high: torch.Tensor, clipped: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    valid = mask.bool()
    return {
        "high_entropy_frac": _frac(high, valid),
        "pg_clipfrac_high_entropy": _frac(clipped, high),
        "pg_clipfrac_low_entropy": _frac(clipped, valid & ~high),
    }


def _split_clip_ranges(
    high: torch.Tensor, config: PolicyLossConfig, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    clip_low = torch.where(
        high,
        torch.tensor(config.high_entropy_clip_ratio_low, dtype=like.dtype, device=like.device),
        torch.tensor(config.low_entropy_clip_ratio_low, dtype=like.dtype, device=like.device),
    )
    clip_high = torch.where(
        high,
        torch.tensor(config.high_entropy_clip_ratio_high, dtype=like.dtype, device=like.device),
        torch.tensor(config.low_entropy_clip_ratio_high, dtype=like.dtype, device=like.device),
    )
    return clip_low, clip_high


def _kl_scale(high: torch.Tensor, config: PolicyLossConfig, like: torch.Tensor) -> torch.Tensor:
    return torch.where(
        high,
        torch.tensor(config.high_entropy_kl_scale, dtype=like.dtype, device=like.device),
        torch.ones((), dtype=like.dtype, device=like.device),
    )


# --------------------------------------------------------------------------------------------------
# losses


@register_policy_loss("vanilla")
def vanilla(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    loss_agg_mode: str = "token-mean",
    config: PolicyLossConfig,
    entropy: torch.Tensor | None = None,
    batch_num_tokens: Number | None = None,
    global_batch_size: Number | None = None,
) -> PolicyLossOutput:
    """PPO clip: max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), then min(., -A c) where A < 0.

    Metrics: pg_clipfrac (clip active), pg_clipfrac_lower (dual clip active, over all valid tokens),
    ppo_kl (mean of old - new log-prob). `entropy` is ignored.
    """
    log_ratio = _log_ratio(old_log_prob, log_prob)
    ratio = torch.exp(log_ratio)
    pg_losses, clipped, dual = _ppo_clip(
        ratio, advantages, config.clip_ratio_low, config.clip_ratio_high, config.clip_ratio_c
    )
    loss = agg_loss(
        pg_losses,
        response_mask,
        loss_agg_mode,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
    )
    metrics = {
        "pg_clipfrac": _frac(clipped, response_mask),
        "pg_clipfrac_lower": _frac(dual, response_mask),
        "ppo_kl": masked_mean(-log_ratio, response_mask).item(),
    }
    return PolicyLossOutput(loss=loss, metrics=metrics, kl_token_scale=None)


@register_policy_loss("archer", needs_entropy=True)
def archer(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    loss_agg_mode: str = "token-mean",
    config: PolicyLossConfig,
    entropy: torch.Tensor | None = None,
    batch_num_tokens: Number | None = None,
    global_batch_size: Number | None = None,
) -> PolicyLossOutput:
    """Archer's dual-token loss: vanilla dual-clip PPO with per-token clip ranges.

    Tokens above their response's `token_entropy_quantile` entropy get the high-entropy clip ranges
    (wider: they are the reasoning forks that should move) and `kl_token_scale =
    high_entropy_kl_scale`; the rest get the low-entropy ranges and scale 1 (knowledge tokens stay
    near the reference). All tokens stay in one loss; nothing is masked out of the gradient.
    """
    ent = _require_entropy(entropy, "archer", log_prob)
    high = high_entropy_mask(ent, response_mask, config.token_entropy_quantile)
    log_ratio = _log_ratio(old_log_prob, log_prob)
    ratio = torch.exp(log_ratio)
    clip_low, clip_high = _split_clip_ranges(high, config, ratio)
    pg_losses, clipped, dual = _ppo_clip(ratio, advantages, clip_low, clip_high, config.clip_ratio_c)
    loss = agg_loss(
        pg_losses,
        response_mask,
        loss_agg_mode,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
    )
    metrics = {
        "pg_clipfrac": _frac(clipped, response_mask),
        "pg_clipfrac_lower": _frac(dual, response_mask),
        "ppo_kl": masked_mean(-log_ratio, response_mask).item(),
        **_split_metrics(high, clipped, response_mask),
    }
    return PolicyLossOutput(loss=loss, metrics=metrics, kl_token_scale=_kl_scale(high, config, ratio))


@register_policy_loss("aspo", needs_entropy=True)
def aspo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    loss_agg_mode: str = "token-mean",
    config: PolicyLossConfig,
    entropy: torch.Tensor | None = None,
    batch_num_tokens: Number | None = None,
    global_batch_size: Number | None = None,
) -> PolicyLossOutput:
    """ASPO (Archer2.0): the archer entropy split, a flipped IS weight for A > 0, soft dual clips.

    With r = pi/pi_old, eps_l/eps_h the token's (entropy-split) clip ranges, c = clip_ratio_c and
    c' = aspo_dual_clip, the per-token loss L and its gradient are (sg = stop-gradient):

    A > 0 (and A = 0, where everything is 0), p = min(r, 1 + eps_h):
      1/c' <= r < 1 + eps_h:  L = -A / r          dL = -A * (1/r) * grad log pi   (flipped weight)
      r >= 1 + eps_h:         L = -A / (1+eps_h)  dL = 0                           (clipped)
      r < 1/c':               L = -A * c'         dL = -A * c' * grad log pi       (soft dual clip)
    A < 0, p = max(r, 1 - eps_l):
      r <= c:                 L = -A * p          dL = -A * r * grad log pi, or 0 below 1 - eps_l
      r > c:                  L = -A * c          dL = -A * c * grad log pi        (soft dual clip)

    Flipping the weight means a positive token whose probability already rose (r > 1) is pushed
    less and one that fell is pushed more, so positive tokens stop dominating the update (and the
    entropy collapse that follows); the soft dual clip caps that weight at c' instead of zeroing it.

    The gradients are exactly those of Archer2.0's `compute_policy_loss_archer`. The forward values
    of the dual-clipped tokens differ on purpose: Archer2.0 writes them as -A * sg(c) * log pi,
    whose value depends on log pi and jumps at the boundary; here they are the constant -A * c with
    the same gradient (a straight-through term), so the reported loss is continuous and bounded.
    """
    ent = _require_entropy(entropy, "aspo", log_prob)
    high = high_entropy_mask(ent, response_mask, config.token_entropy_quantile)
    log_ratio = _log_ratio(old_log_prob, log_prob)
    ratio = torch.exp(log_ratio)
    clip_low, clip_high = _split_clip_ranges(high, config, ratio)
    # value 0, gradient grad(log pi): turns a constant weight into a soft (gradient-keeping) clip
    straight_through = log_prob - log_prob.detach()

    # A > 0: flipped importance weight.
    p_pos = torch.minimum(ratio, 1 + clip_high)
    inv_p = 1.0 / p_pos.detach()
    pos_losses = -advantages * (p_pos / p_pos.detach()) * inv_p
    pos_dual = inv_p > config.aspo_dual_clip
    pos_losses = torch.where(
        pos_dual, -advantages * config.aspo_dual_clip * (1.0 + straight_through), pos_losses
    )

    # A < 0: PPO's lower clip, with a soft dual clip above c.
    p_neg = torch.maximum(ratio, 1 - clip_low)
    neg_dual = p_neg.detach() > config.clip_ratio_c
    neg_losses = torch.where(
        neg_dual, -advantages * config.clip_ratio_c * (1.0 + straight_through), -advantages * p_neg
    )

    negative = advantages < 0
    positive = advantages > 0
    pg_losses = torch.where(negative, neg_losses, pos_losses)
    loss = agg_loss(
        pg_losses,
        response_mask,
        loss_agg_mode,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
    )
    clipped = (positive & (ratio > 1 + clip_high)) | (negative & (ratio < 1 - clip_low))
    metrics = {
        "pg_clipfrac": _frac(clipped, response_mask),
        "pg_clipfrac_lower": _frac(negative & neg_dual, response_mask),
        "pg_clipfrac_dual_pos": _frac(positive & pos_dual, response_mask),
        "ppo_kl": masked_mean(-log_ratio, response_mask).item(),
        **_split_metrics(high, clipped, response_mask),
    }
    return PolicyLossOutput(loss=loss, metrics=metrics, kl_token_scale=_kl_scale(high, config, ratio))
