"""One step -> trace record, the same for every engine: per-response arrays in, a schema-v1 table out.

Each engine adapts its own batch layout to a `StepRecord` (the local engine and the agent from a
`Rollout`, verl from its TransferQueue rows); what the trace derives from them — the per-response
advantage, the token-role column, the summary of the run — is computed here, once. The trace
writer is created through `open_trace`, so both engines write the same `summary.json` fields.
numpy and pyarrow only (no torch).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from archer.core.trace.schema import SUMMARY_INFLUENCE_SETTINGS, TOKEN_ROLE_COLUMN

TOKENIZER_DIR = "tokenizer"  # <run>/tokenizer: the tokenizer that decodes the run's trace


def sequence_advantages(advantages: Sequence[Any], loss_masks: Sequence[Any]) -> np.ndarray:
    """One advantage per response: the mean of its token advantages over the tokens that receive
    gradient (the loss mask). Tool-result tokens carry no loss, so they are not in the mean; with
    an outcome estimator (GRPO, RLOO, ...) this is the one value broadcast over the response."""
    out = np.zeros(len(advantages), dtype=np.float64)
    for i, (a, m) in enumerate(zip(advantages, loss_masks)):
        m = np.asarray(m, dtype=np.float64)
        a = np.asarray(a, dtype=np.float64)[: len(m)]
        out[i] = float((a * m[: len(a)]).sum() / max(1.0, m.sum()))
    return out


def role_column(roles: Sequence[np.ndarray]) -> pa.ListArray:
    """The trace's per-token `token_role` column (list<int8>, codes from archer.core.trace.schema)."""
    offsets = np.zeros(len(roles) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in roles], out=offsets[1:])
    values = np.concatenate([np.asarray(r) for r in roles]).astype(np.int8) if roles else np.zeros(0, np.int8)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int8()))


@dataclass
class StepRecord:
    """What one training step hands to the trace, one entry per real response (no padding rows).

    Token arrays are response-aligned and cut to the response length; `advantages` are the token
    advantages of the update and `loss_mask` marks the tokens that receive gradient."""

    uid: list[str]
    group_index: list[int]
    sample_index: list[int]
    prompt_ids: list[np.ndarray]
    response_ids: list[np.ndarray]
    entropy: list[np.ndarray]
    advantages: list[np.ndarray]
    loss_mask: list[np.ndarray]
    reward: np.ndarray
    truncated: np.ndarray
    correct: Sequence[bool | None] | None = None
    accepted: Sequence[bool | None] | None = None
    influence: Sequence[np.ndarray | None] | None = None
    data_source: Sequence[str | None] | None = None
    token_role: Sequence[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.uid)

    def sequence_advantages(self) -> np.ndarray:
        return sequence_advantages(self.advantages, self.loss_mask)

    def table(self, step: int) -> pa.Table:
        """The trace step table (plus `token_role` in agent mode)."""
        from archer.core.trace.schema import build_step_table

        extra = None if self.token_role is None else {TOKEN_ROLE_COLUMN: role_column(self.token_role)}
        return build_step_table(
            step,
            uid=self.uid,
            group_index=self.group_index,
            sample_index=self.sample_index,
            prompt_ids=[np.asarray(p, dtype=np.int32) for p in self.prompt_ids],
            response_ids=[np.asarray(r, dtype=np.int32) for r in self.response_ids],
            entropy=[np.asarray(e, dtype=np.float16) for e in self.entropy],
            reward=np.asarray(self.reward, dtype=np.float64),
            advantage=self.sequence_advantages(),
            truncated=np.asarray(self.truncated, dtype=bool),
            correct=None if self.correct is None else list(self.correct),
            accepted=None if self.accepted is None else list(self.accepted),
            influence=None if self.influence is None else list(self.influence),
            data_source=None if self.data_source is None else list(self.data_source),
            extra=extra,
        )


def trace_summary(
    *,
    engine: str,
    preset: str | None,
    run_dir: str | os.PathLike,
    model_path: str | None,
    rollout_n: int,
    influence: Mapping[str, Any] | None = None,
    agent: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `summary.json` of a trace, the same fields whatever the engine. `influence` is the
    influence settings when influence is on (None when off); `agent` the tools and algorithm in
    agent mode. The tokenizer that decodes the trace is always `<run>/tokenizer`."""
    from archer import __version__
    from archer.core.run import git_commit

    run = Path(run_dir).resolve()
    return {
        "engine": engine,
        "preset": preset,
        "run_dir": str(run),
        "model_path": model_path,
        "tokenizer_path": str(run / TOKENIZER_DIR),
        "git_commit": git_commit(),
        "archer_version": __version__,
        "rollout_n": int(rollout_n),
        "influence": influence is not None,
        SUMMARY_INFLUENCE_SETTINGS: None if influence is None else dict(influence),
        "agent": None if agent is None else dict(agent),
    }


def open_trace(
    trace_cfg: Any, run_dir: str | os.PathLike, summary: Mapping[str, Any], *, resume_after_step: int | None
) -> Any:
    """The run's trace writer (`trace.dir` or `<run>/trace`), set up from the trace settings."""
    from archer.core.trace import TraceWriter

    return TraceWriter.from_config(trace_cfg, run_dir, summary, resume_after_step=resume_after_step)
