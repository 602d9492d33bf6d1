"""The influence knobs as a plain dataclass (no OmegaConf), so the tracer imports torch only.

`archer/core/config/schema.py` declares the same fields for the `influence.*` config section;
`InfluenceSettings.from_mapping` turns that section (or any mapping) into this object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from archer.influence.outputs import OUTPUT_FUNCTIONS as _OUTPUT_FUNCTIONS

HESSIAN_MODES = ("inverse", "identity")
HESSIAN_SOURCES = ("response", "token")
OUTPUT_FUNCTIONS = tuple(_OUTPUT_FUNCTIONS)  # the objects live in archer.influence.outputs
SCOPES = ("per_prompt", "all_selected")
CONTRASTIVE_AGGS = ("sum", "mean")
CONTRASTS = ("include", "leave_one_out")
RESPONSE_GRADS = ("sum", "mean")
PROJECTIONS = ("rademacher", "gaussian", "identity")
DAMPINGS = ("dimension", "rank")
STORAGE_DTYPES = ("bf16", "fp32")
ACCEPT_RULES = ("group_max", "threshold")


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
    damping: str = "rank"
    max_tokens_per_response: int = 0
    max_prompts_per_step: int = 0
    storage_dtype: str = "bf16"
    grad_offload_to_cpu: bool = False
    force_gpu_compute: bool = False
    profile_timing: bool = False
    accept_rule: str = "group_max"
    accept_threshold: float = 0.5
    # read by the local engine, not the tracer: keep the state before every k-th traced step's
    # update for `archer influence check`, the newest check_keep of them (0 = all)
    check_every: int = 0
    check_keep: int = 2

    @property
    def output(self) -> Any:
        """The `OutputFunction` object named by `output_function`."""
        from archer.influence.outputs import get_output_function

        return get_output_function(self.output_function)

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
            ("damping", DAMPINGS),
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
