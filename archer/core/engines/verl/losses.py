"""archer's dual-token policy losses behind verl's policy-loss signature, and the loss wrapper
of archer's training worker that gives them what that signature lacks.

verl's `ppo_loss` calls a registered loss as
`fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)`.
archer's `archer` and `aspo` losses also need the current policy's per-token entropy and archer's
own knobs (entropy quantile, split clip ranges, ASPO's dual clip), and they return a per-token KL
scale that verl's KL term has no place for. `ArcherLoss` wraps `ppo_loss` in the worker: for one
call it publishes the padded entropy and the knobs in a context variable that the adapted loss
reads (`loss_inputs`), and afterwards adds the KL correction the loss asked for. Called without
the wrapper (verl's stock worker), the adapted losses fail with a message that says so.

Normalisers: verl aggregates a micro-batch as Σ/N_global·dp_size (`global_batch_info`); archer's
`agg_loss` divides by the denominators it is given, so the adapter passes N_global/dp_size.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch

from archer.core.algorithms import (
    PolicyLossConfig,
    available_policy_losses,
    get_policy_loss,
    loss_needs_entropy,
)

# archer's "vanilla" is verl's own vanilla loss (tested equal); every other archer loss is
# registered into verl's registry by the plugin.
VERL_NATIVE_LOSSES = ("vanilla",)


def archer_losses() -> list[str]:
    """The policy losses archer adds to verl."""
    return [n for n in available_policy_losses() if n not in VERL_NATIVE_LOSSES]


ARCHER_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


@dataclass
class LossInputs:
    """What one call of an adapted loss reads besides verl's arguments."""

    entropy: torch.Tensor | None
    knobs: dict[str, float]
    kl_token_scale: torch.Tensor | None = None  # written back by the loss


_INPUTS: contextvars.ContextVar[LossInputs | None] = contextvars.ContextVar(
    "archer_loss_inputs", default=None
)


@contextmanager
def loss_inputs(entropy: torch.Tensor | None, knobs: dict[str, float]) -> Iterator[LossInputs]:
    token = _INPUTS.set(LossInputs(entropy=entropy, knobs=dict(knobs)))
    try:
        yield _INPUTS.get()
    finally:
        _INPUTS.reset(token)


def knob_names() -> tuple[str, ...]:
    """PolicyLossConfig fields that are archer's own (verl's config holds the plain clip ratios)."""
    verl_owned = {"clip_ratio_low", "clip_ratio_high", "clip_ratio_c"}
    return tuple(f.name for f in fields(PolicyLossConfig) if f.name not in verl_owned)


def _policy_loss_config(verl_config: Any, knobs: dict[str, float]) -> PolicyLossConfig:
    base = {
        "clip_ratio_low": float(
            verl_config.clip_ratio_low if verl_config.clip_ratio_low is not None else verl_config.clip_ratio
        ),
        "clip_ratio_high": float(
            verl_config.clip_ratio_high if verl_config.clip_ratio_high is not None else verl_config.clip_ratio
        ),
        "clip_ratio_c": float(verl_config.clip_ratio_c),
    }
    return PolicyLossConfig(**base, **{k: float(v) for k, v in knobs.items() if k in knob_names()})


def archer_denominators(global_batch_info: dict, loss_agg_mode: str) -> tuple[Any, Any]:
    """(batch_num_tokens, global_batch_size) for archer's agg_loss, so that it reproduces verl's
    Σ/N·dp_size aggregation (None where verl falls back to the micro-batch's own count)."""
    if loss_agg_mode not in ARCHER_AGG_MODES:
        raise ValueError(
            f"archer's policy losses support loss_agg_mode {', '.join(ARCHER_AGG_MODES)}; got "
            f"{loss_agg_mode!r}"
        )
    dp = float(global_batch_info.get("dp_size", 1) or 1)
    tokens = global_batch_info.get("batch_num_tokens")
    seqs = global_batch_info.get("global_batch_size")
    return (None if tokens is None else float(tokens) / dp), (None if seqs is None else float(seqs) / dp)


def verl_policy_loss(name: str) -> Any:
    """archer's policy loss `name` with verl's signature and return value."""
    archer_fn = get_policy_loss(name)

    def policy_loss(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        loss_agg_mode="token-mean",
        config=None,
        rollout_is_weights=None,
    ):
        inputs = _INPUTS.get()
        if inputs is None or inputs.entropy is None:
            raise RuntimeError(
                f"policy loss {name!r} needs the per-token entropy of the current policy, which verl's "
                "policy-loss signature does not carry: it runs inside archer's training worker "
                "(archer's archer_sync trainer, started by 'archer train')"
            )
        if config is None:
            raise ValueError(f"policy loss {name!r} needs verl's actor config")
        if rollout_is_weights is not None:
            raise NotImplementedError(
                f"policy loss {name!r} does not apply rollout-correction weights "
                "(algorithm.rollout_correction.rollout_is); switch them off or use loss_mode=vanilla"
            )
        tokens, seqs = archer_denominators(dict(config.global_batch_info), loss_agg_mode)
        out = archer_fn(
            old_log_prob,
            log_prob,
            advantages,
            response_mask,
            loss_agg_mode=loss_agg_mode,
            config=_policy_loss_config(config, inputs.knobs),
            entropy=inputs.entropy.to(log_prob.dtype),
            batch_num_tokens=tokens,
            global_batch_size=seqs,
        )
        inputs.kl_token_scale = out.kl_token_scale
        return out.loss, {f"actor/{k}": v for k, v in out.metrics.items()}

    policy_loss.__name__ = f"archer_{name}_policy_loss"
    policy_loss._archer_name = name  # recognised by the plugin when it registers again
    return policy_loss


class ArcherLoss:
    """Wraps verl's `ppo_loss` (a partial bound to the actor config) in archer's training worker.

    For archer's entropy-split losses it pads the engine's entropy to the response layout and
    publishes it with archer's knobs for the duration of the call, then adds
    `kl_loss_coef·agg((scale − 1)·kl)` so that the KL term verl added becomes `agg(scale·kl)`."""

    def __init__(self, base: Any, knobs: dict[str, float] | None = None):
        self.base = base
        self.knobs = dict(knobs or {})
        self.config = getattr(base, "keywords", {}).get("config")

    @property
    def loss_mode(self) -> str:
        if self.config is None:
            return "vanilla"
        return str(self.config.policy_loss.get("loss_mode", "vanilla"))

    @property
    def needs_entropy(self) -> bool:
        return self.loss_mode in archer_losses() and loss_needs_entropy(self.loss_mode)

    def __call__(self, *args: Any, **kwargs: Any):
        if (
            args or "model_output" not in kwargs or not self.needs_entropy
        ):  # e.g. verl's top-k logits processor
            return self.base(*args, **kwargs)
        return self._with_entropy(kwargs["model_output"], kwargs["data"], kwargs.get("dp_group"))

    def _with_entropy(self, model_output: dict, data: Any, dp_group: Any):
        from verl.workers.utils.padding import no_padding_2_padding

        if model_output.get("entropy") is None:
            raise RuntimeError(
                f"policy loss {self.loss_mode!r} needs the entropy of the training forward: set "
                "actor_rollout_ref.actor.calculate_entropy=true ('archer train' does)"
            )
        entropy = no_padding_2_padding(model_output["entropy"], data).detach()
        with loss_inputs(entropy, self.knobs) as inputs:
            loss, metrics = self.base(model_output=model_output, data=data, dp_group=dp_group)
        if inputs.kl_token_scale is not None and self.config is not None and self.config.use_kl_loss:
            correction = self._kl_correction(model_output, data, inputs.kl_token_scale)
            loss = loss + self.config.kl_loss_coef * correction
            metrics["actor/kl_loss_token_scale_correction"] = float(correction.detach())
        return loss, metrics

    def _kl_correction(self, model_output: dict, data: Any, scale: torch.Tensor) -> torch.Tensor:
        from verl.trainer.ppo.core_algos import agg_loss, kl_penalty
        from verl.workers.utils.padding import no_padding_2_padding

        log_prob = no_padding_2_padding(model_output["log_probs"], data)
        padded = data.select("ref_log_prob", "response_mask").to_padded_tensor()
        width = log_prob.shape[1]
        ref = padded["ref_log_prob"][:, :width]
        mask = padded["response_mask"][:, :width].to(bool)
        kld = kl_penalty(logprob=log_prob, ref_logprob=ref, kl_penalty=self.config.kl_loss_type)
        return agg_loss(
            loss_mat=(scale[:, :width] - 1.0) * kld,
            loss_mask=mask,
            loss_agg_mode=self.config.loss_agg_mode,
            **self.config.global_batch_info,
        )
