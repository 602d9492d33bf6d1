"""The viewer's model: what to read from a trace, when, and what to keep (no Textual here).

- `trace_data`: `TraceData`, the trace opened for viewing, with small LRU caches per step/response
  (and `PromptStep`: one prompt followed across steps);
- `responses`: `ResponseTable`, one step's summary columns with sorting, filtering and groups;
- `tokens`: `ResponseTokens`, one response's token arrays, with the token filter, order and search;
- `stats`: numbers reduced from a step's token columns (top-K, scale percentiles, influence
  statistics and fidelity notes) and the step x position entropy map.

The bench and the tests use these without a screen. Export records and text decoding live in
`archer.core.trace` because `archer trace export` needs them without the viewer.
"""

from .responses import ACCEPT_FILTERS, RESPONSE_COLUMNS, ResponseTable, sort_order
from .stats import (
    CONTEXT_TOKENS,
    TOPK_KINDS,
    EntropyMap,
    StepStats,
    TokenHit,
    compute_step_stats,
    entropy_by_position,
    fidelity_notes,
    step_auc,
)
from .tokens import (
    TOKEN_SORTS,
    ResponseTokens,
    search_ids,
    search_tokens,
    token_filter_mask,
    token_order,
)
from .trace_data import LRU, PromptStep, StepRow, TraceData

__all__ = [
    "ACCEPT_FILTERS",
    "CONTEXT_TOKENS",
    "LRU",
    "RESPONSE_COLUMNS",
    "TOKEN_SORTS",
    "TOPK_KINDS",
    "EntropyMap",
    "PromptStep",
    "ResponseTable",
    "ResponseTokens",
    "StepRow",
    "StepStats",
    "TokenHit",
    "TraceData",
    "compute_step_stats",
    "entropy_by_position",
    "fidelity_notes",
    "search_ids",
    "search_tokens",
    "sort_order",
    "step_auc",
    "token_filter_mask",
    "token_order",
]
