"""Output functions: what influence measures the gradient of (Kronfluence's "task").

Each object defines one measured function over a response and how each engine obtains its
gradient:

- `training_loss`: the real PPO loss, captured inside the update's own backward (first epoch),
  with the loss normaliser divided out and the sign flipped, so the captured gradient is that of
  −L — the direction training moves in. No extra pass.
- `log_prob`, `log_prob_advantage`, `log_prob_reward`: O = Σ_t w_t · log p(token_t), with w_t = 1,
  the token's advantage, or the response's reward; captured by one extra forward+backward of O
  over the traced rows, before the update.

`sign` is σ_r, the sign a response's contrast weight carries (scoring.py). Importing this module
does not import torch (the config layer reads the names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _sign(x: float) -> float:
    return float((x > 0) - (x < 0))


@dataclass(frozen=True)
class OutputFunction:
    name: str
    in_training_backward: bool  # captured inside the real PPO backward (no extra pass)
    signed_by: str  # what σ_r follows: "advantage", "reward" or "none" (+1)
    weight: str  # w_t of O = Σ w_t·log p_t: "one", "advantage" (per token), "reward" (per response)

    def sign(self, advantage: float, reward: float) -> float:
        """σ_r of a response with this sequence advantage and reward."""
        if self.signed_by == "advantage":
            return _sign(advantage)
        if self.signed_by == "reward":
            return _sign(reward)
        return 1.0

    def token_weights(self, log_probs: Any, advantages: Any, rewards: Any) -> Any:
        """w [b, R] for O = Σ w·log p, shaped like `log_probs` (torch tensors; `advantages` [b, R'],
        `rewards` [b]). Not defined for the training loss, which is the update's own objective."""
        import torch

        if self.in_training_backward:
            raise ValueError(f"{self.name} is captured in the update's backward, not by an extra pass")
        if self.weight == "advantage":
            return advantages[:, : log_probs.shape[1]].to(log_probs.device, log_probs.dtype)
        if self.weight == "reward":
            return rewards.to(log_probs.device, log_probs.dtype)[:, None].expand_as(log_probs)
        return torch.ones_like(log_probs)

    def objective(self, log_probs: Any, mask: Any, advantages: Any, rewards: Any) -> Any:
        """O = Σ_t mask·w·log p over a micro-batch (a scalar that keeps the graph)."""
        weights = self.token_weights(log_probs, advantages, rewards)
        return (log_probs * mask.to(log_probs.device, log_probs.dtype) * weights).sum()


OUTPUT_FUNCTIONS: dict[str, OutputFunction] = {
    fn.name: fn
    for fn in (
        OutputFunction("training_loss", in_training_backward=True, signed_by="advantage", weight="one"),
        OutputFunction(
            "log_prob_advantage", in_training_backward=False, signed_by="advantage", weight="advantage"
        ),
        OutputFunction("log_prob", in_training_backward=False, signed_by="none", weight="one"),
        OutputFunction("log_prob_reward", in_training_backward=False, signed_by="reward", weight="reward"),
    )
}


def get_output_function(name: str) -> OutputFunction:
    try:
        return OUTPUT_FUNCTIONS[name]
    except KeyError:
        raise ValueError(
            f"influence.output_function must be one of {', '.join(OUTPUT_FUNCTIONS)}; got {name!r}"
        ) from None
