"""Agentic RL for the local engine: multi-turn tool rollouts over one batched KV cache, ARPO/AEPO
entropy-based branching, and the glue the trainer calls (docs/agentic.md).

- `protocol`: the <python>/<search> call and <result> tags, token roles, answer extraction
- `branching`: ARPO's and AEPO's rules and the segment entropy
- `decoder`: `HFDecoder`, the batched decode loop with holes, forks and fresh rows
- `rollout`: `AgentRollout`, the per-step loop; `to_rollout` builds the engine's `Rollout`
- `engine`: `AgentRunner` (tools, rollouts, validation, warm-up demonstrations)
"""
