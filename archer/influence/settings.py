"""The influence knobs as a plain dataclass (no OmegaConf), so the tracer imports torch only.

`archer/core/config/schema.py` declares the same fields for the `influence.*` config section;
`InfluenceSettings.from_mapping` turns that section (or any mapping) into this object. This module
imports nothing but the standard library: trace readers (`archer collect`, the viewer) use
`trace_contrast` to say how a trace's scores were made without importing torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HESSIAN_MODES = ("inverse", "identity")
HESSIAN_SOURCES = ("response", "token")
OUTPUT_FUNCTIONS = ("training_loss", "log_prob_advantage", "log_prob", "log_prob_reward")
SCOPES = ("per_prompt", "all_selected")
CONTRASTIVE_AGGS = ("sum", "mean")
CONTRASTS = ("include", "leave_one_out")
RESPONSE_GRADS = ("sum", "mean")
PROJECTIONS = ("rademacher", "gaussian", "identity")
STORAGE_DTYPES = ("bf16", "fp32")
ACCEPT_RULES = ("group_max", "threshold")

# knobs that only change where or how fast scores are computed, not what they mean
_OPERATIONAL = ("enable", "grad_offload_to_cpu", "force_gpu_compute", "profile_timing")

# the trace summary key under which `InfluenceSettings.trace_summary()` is stored
TRACE_SUMMARY_KEY = "influence_settings"


@dataclass
class InfluenceSettings:
    enable: bool = False
    hessian_mode: str = "inverse"
    hessian_source: str = "response"
    output_function: str = "training_loss"
    accepted_rejected_scope: str = "per_prompt"
    contrastive_agg: str = "sum"
    contrast: str = "include"
    response_grad: str = "sum"
    module_name_filter: str = r"mlp\.down_proj$"
    max_modules: int = 4
    projection_dim_factor: int = 32
    max_proj_vector_sum: int = 128
    max_hessian_dim: int = 4096
    projection: str = "rademacher"
    reg_lambda: float = 0.0
    max_tokens_per_response: int = 0
    max_prompts_per_step: int = 0
    storage_dtype: str = "bf16"
    grad_offload_to_cpu: bool = False
    force_gpu_compute: bool = False
    profile_timing: bool = False
    accept_rule: str = "group_max"
    accept_threshold: float = 0.5

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | Any) -> InfluenceSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(m, Mapping):
            m = {k: getattr(m, k) for k in names if hasattr(m, k)}
        return cls(**{k: v for k, v in dict(m).items() if k in names})

    def validate(self) -> None:
        for name, allowed in (
            ("hessian_mode", HESSIAN_MODES),
            ("hessian_source", HESSIAN_SOURCES),
            ("output_function", OUTPUT_FUNCTIONS),
            ("accepted_rejected_scope", SCOPES),
            ("contrastive_agg", CONTRASTIVE_AGGS),
            ("contrast", CONTRASTS),
            ("response_grad", RESPONSE_GRADS),
            ("projection", PROJECTIONS),
            ("storage_dtype", STORAGE_DTYPES),
            ("accept_rule", ACCEPT_RULES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"influence.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                )

    @property
    def exact(self) -> bool:
        """Full-dimension factors (no projection): the scores are exact for the traced modules."""
        return self.projection == "identity"

    def trace_summary(self) -> dict[str, Any]:
        """The knobs that decide what a trace's influence scores mean (plain JSON values), for the
        trace's summary.json under `TRACE_SUMMARY_KEY`. Operational knobs (offload, timing) are left
        out; a projection factor is meaningless with `projection=identity` and is left out too."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _OPERATIONAL}
        if self.exact:
            for key in ("projection_dim_factor", "max_proj_vector_sum"):
                out.pop(key)
        return out


def trace_contrast(summary: Mapping[str, Any]) -> str | None:
    """Which contrast a trace's influence used, from its summary.json: `include` or
    `leave_one_out`; None for a trace without influence. Traces written before the contrast was
    recorded used `include`, the only contrast there was."""
    recorded = summary.get(TRACE_SUMMARY_KEY)
    if isinstance(recorded, Mapping) and recorded.get("contrast"):
        return str(recorded["contrast"])
    return "include" if summary.get("influence") else None
