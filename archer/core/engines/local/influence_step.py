"""The influence tracer inside the local engine's step: selection, capture and scoring.

`training_loss` is captured inside the real PPO backward of the first epoch (through the update's
micro-batch hook, with the loss normaliser divided out and the sign flipped so that the captured
gradient is that of −L, the direction training moves in); the other output functions run one extra
forward+backward of their objective over the selected rows, before the update, with
`torch.autograd.grad` (the parameters' .grad is not touched).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from archer.core.engines.local.forward import make_micro_batch, response_logprobs
from archer.errors import ConfigError
from archer.influence.selection import plan_step, trace_accepted
from archer.influence.settings import InfluenceSettings
from archer.influence.tracer import InfluenceTracer, padded_positions


class LocalInfluence:
    def __init__(self, model: Any, influence_cfg: Any):
        if isinstance(influence_cfg, InfluenceSettings):
            self.settings = influence_cfg
        else:
            from omegaconf import OmegaConf

            self.settings = InfluenceSettings.from_mapping(
                OmegaConf.to_container(influence_cfg, resolve=True)
            )
        try:
            self.tracer = InfluenceTracer(model, self.settings)
        except ValueError as e:
            raise ConfigError(
                str(e), hint="see 'archer presets show NAME --explain' for the influence.* keys"
            ) from e
        self.model = model
        self.rollout = None
        self.selected: dict[int, int] = {}
        self.accepted: list[bool] = []
        self.constant_groups = 0

    def begin(
        self,
        rollout: Any,
        rewards: torch.Tensor,
        seq_advantages: torch.Tensor,
        groups: list[Any],
        correct: list[bool] | None = None,
    ) -> None:
        metas, accepted, constant = plan_step(
            rewards.tolist(), seq_advantages.tolist(), groups, self.settings, correct=correct
        )
        lengths = rollout.response_lengths.tolist()
        self.rollout = rollout
        self.accepted = trace_accepted(groups, accepted)
        self.constant_groups = constant
        self.selected = {m.row: int(lengths[m.row]) for m in metas}
        self.tracer.begin_step(metas, self.selected)

    def _positions(self, mb: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = mb.rows.tolist()
        lengths = self.rollout.response_lengths[mb.rows].tolist()
        return padded_positions(
            rows,
            list(range(len(rows))),
            lengths,
            seq_len=mb.input_ids.shape[1],
            prompt_width=mb.prompt_width,
            selected=self.selected,
            max_tokens=self.settings.max_tokens_per_response,
        )

    def micro_hook(self, phase: str, epoch: int, mb: Any, normaliser: float) -> None:
        """Capture `training_loss` inside the first epoch of the real update."""
        if epoch != 0 or not self.selected:
            return
        if phase == "begin":
            pos, rid, tok = self._positions(mb)
            self.tracer.recorder.begin_micro(pos, rid, tok, grad_scale=-normaliser)
        else:
            self.tracer.recorder.end_micro()

    def separate_backward(
        self,
        advantages: torch.Tensor,
        rewards: torch.Tensor,
        *,
        micro_batch_size: int,
        temperature: float,
        device: Any,
    ) -> None:
        """One extra forward+backward of Σ w·log p over the selected rows (before the update)."""
        fn = self.settings.output
        rows = sorted(self.selected)
        for start in range(0, len(rows), micro_batch_size):
            part = torch.as_tensor(rows[start : start + micro_batch_size], dtype=torch.long)
            mb = make_micro_batch(self.rollout, part, device)
            pos, rid, tok = self._positions(mb)
            w = mb.response_width

            def objective(mb=mb, part=part, w=w) -> torch.Tensor:
                logp, _ = response_logprobs(self.model, mb, temperature=temperature, with_entropy=False)
                mask = self.rollout.response_mask[part, :w]
                return fn.objective(logp, mask, advantages[part], rewards[part])

            self.tracer.separate_backward(objective, pos, rid, tok)

    def finish(self) -> tuple[list[np.ndarray | None], dict[str, float]]:  # noqa: D401
        """Per-row influence arrays (None for rows not traced) and the step's metrics."""
        per_row, metrics = self.tracer.finish_step()
        B = self.rollout.size
        out: list[np.ndarray | None] = [None] * B
        for r, v in per_row.items():
            out[r] = v.to(torch.float32).numpy()
        metrics["influence/groups_constant"] = float(self.constant_groups)
        self.rollout = None
        self.selected = {}
        return out, metrics
