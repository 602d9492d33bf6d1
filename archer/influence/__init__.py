"""Per-token influence from the real PPO backward pass (imports torch only; see docs/influence.md)."""
