"""Offline evaluation of a model or checkpoint: K samples per problem, graded by archer's reward
functions, summarised as avg@K and unbiased pass@k per data source (see docs/eval-export.md).

- `passk`: the estimator; `samplers`: HF generate (local) and vLLM; `samples`: the resumable sample
  store; `results`: metrics and the table; `runner`: `archer eval` and `--regrade` end to end.
"""

from archer.core.evaluation.passk import default_ks, mean_pass_at_k, parse_ks, pass_at_k

__all__ = ["default_ks", "mean_pass_at_k", "parse_ks", "pass_at_k"]
