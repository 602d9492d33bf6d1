"""The driver's view of one verl step: which rows to trace influence on, and the trace table.

Pure functions over what the trainer reads from TransferQueue (a TensorDict whose rows follow the
step's keys `"{uid}_{session}_{index}"`), so they are tested without Ray or TransferQueue.
Identity is the key, never an order: `archer_row` is a row's position in the step's key list,
padding rows (`is_padding`, uid `pad…`) get -1 and never reach the plan or the trace.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from archer.core.rollout.record import StepRecord
from archer.influence.selection import plan_step, trace_accepted
from archer.influence.settings import InfluenceSettings


def parse_key(key: str) -> tuple[str, int, int]:
    """(uid, session id, output index) of a V1 TransferQueue key."""
    parts = key.rsplit("_", 2)
    if len(parts) != 3:
        return key, 0, 0
    return parts[0], int(parts[1]), int(parts[2])


def padding_mask(keys: Sequence[str], tags: Sequence[dict] | None) -> np.ndarray:
    """True for the rows verl added to make the batch divisible (never traced)."""
    tags = tags or [{}] * len(keys)
    return np.array(
        [bool(t.get("is_padding", False)) or parse_key(k)[0].startswith("pad") for k, t in zip(keys, tags)],
        dtype=bool,
    )


def as_list(x: Any) -> list:
    """A TensorDict non-tensor field (NonTensorStack, numpy object array, list) as a plain list."""
    if x is None:
        return []
    if hasattr(x, "tolist"):
        return list(x.tolist())
    return list(x)


def nested_rows(t: Any) -> list[np.ndarray]:
    """Per-row numpy arrays of a nested (jagged) tensor or a list of tensors."""
    if hasattr(t, "is_nested") and t.is_nested:
        return [r.detach().cpu().numpy() for r in t.unbind()]
    return [np.asarray(r.detach().cpu().numpy() if hasattr(r, "detach") else r) for r in t]


@dataclass
class InfluencePlan:
    """What the driver decides before the update: per-key tensor fields for the workers, the
    selected responses, and the trace's `accepted` column."""

    fields: dict[str, np.ndarray]
    n_selected: int
    accepted: list[bool | None]
    constant_groups: int
    groups: list[Hashable] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.n_selected > 0


def plan_influence(
    keys: Sequence[str],
    padding: np.ndarray,
    rewards: np.ndarray,
    seq_advantages: np.ndarray,
    settings: InfluenceSettings,
    correct: Sequence[bool | None] | None = None,
) -> InfluencePlan:
    """Select the prompt groups to trace (archer.influence.selection) over the real rows and
    spell the result as tensor fields: archer_row (global row id, -1 for padding), archer_group
    (group index, -1 = not traced), archer_accepted and archer_sign. `correct` (the reward's
    `acc` per key, correct_flags) labels accepted/rejected; without it the reward does."""
    n = len(keys)
    real = np.flatnonzero(~padding)
    uids = [parse_key(keys[i])[0] for i in real]
    metas, accepted, constant = plan_step(
        [float(rewards[i]) for i in real],
        [float(seq_advantages[i]) for i in real],
        uids,
        settings,
        correct=[correct[i] for i in real] if correct is not None else None,
    )
    group_ids = {u: k for k, u in enumerate(dict.fromkeys(uids))}
    fields = {
        "archer_row": np.where(padding, -1, np.arange(n)).astype(np.int64),
        "archer_group": np.full(n, -1, dtype=np.int64),
        "archer_accepted": np.zeros(n, dtype=np.int64),
        "archer_sign": np.zeros(n, dtype=np.float32),
        "archer_reward": np.asarray(rewards, dtype=np.float32).copy(),  # O = Σ reward·log p needs it
    }
    for m in metas:
        i = int(real[m.row])
        fields["archer_group"][i] = group_ids[m.group]
        fields["archer_accepted"][i] = int(bool(m.accepted))
        fields["archer_sign"][i] = float(m.sign)
    acc_real = trace_accepted(uids, accepted)
    acc: list[bool | None] = [None] * n
    for j, i in enumerate(real):
        acc[int(i)] = acc_real[j]
    return InfluencePlan(
        fields=fields, n_selected=len(metas), accepted=acc, constant_groups=constant, groups=list(group_ids)
    )


def merge_influence(results: Sequence[Any]) -> tuple[dict[int, np.ndarray], dict[str, float]]:
    """Combine the workers' (per-row scores, metrics): every row comes from exactly one rank;
    counts add up, per-step facts (groups, modules, sizes) are the same on every rank."""
    rows: dict[int, np.ndarray] = {}
    metrics: dict[str, float] = {}
    summed = ("influence/rows_emitted", "influence/tokens_captured")
    for item in results:
        if not item:
            continue
        per_row, m = item
        for r, v in per_row.items():
            if r in rows:
                raise RuntimeError(f"influence row {r} came back from two data-parallel ranks")
            rows[int(r)] = np.asarray(v, dtype=np.float32)
        for k, v in m.items():
            metrics[k] = (
                metrics.get(k, 0.0) + float(v)
                if k in summed
                else max(metrics.get(k, float("-inf")), float(v))
            )
    return rows, metrics


def correct_flags(extra_fields: Sequence[Any] | None, n: int) -> list[bool | None] | None:
    """The reward function's `acc` per row (from reward_extra_info), None where it is absent."""
    if not extra_fields:
        return None
    out: list[bool | None] = []
    for ef in extra_fields:
        info = ef.get("reward_extra_info", {}) if isinstance(ef, dict) else {}
        acc = info.get("acc") if isinstance(info, dict) else None
        out.append(None if acc is None else bool(float(acc) > 0))
    return out if len(out) == n and any(a is not None for a in out) else None


AGENT_ROW_FIELD = "archer_agent"  # extra_fields key of an agent row (agent_loop.ROW_FIELD)


def agent_summaries(extra_fields: Sequence[Any] | None, n: int) -> list[dict | None] | None:
    """Each row's agent summary (archer's agent loop), None where a row has none; None without any."""
    if not extra_fields or len(extra_fields) != n:
        return None
    out = [ef.get(AGENT_ROW_FIELD) if isinstance(ef, dict) else None for ef in extra_fields]
    return out if any(o is not None for o in out) else None


def agent_metrics(
    keys: Sequence[str], padding: np.ndarray, summaries: Sequence[dict | None], n: int
) -> dict[str, float]:
    """The step's `agent/*` metrics from the rows' summaries (the local engine's definitions,
    archer.core.agent.stats), over the real rows."""
    from archer.core.agent.stats import rollout_stats

    rows = [s for i, s in enumerate(summaries) if not padding[i] and s is not None]
    by_uid = {parse_key(keys[i])[0]: s for i, s in enumerate(summaries) if not padding[i] and s is not None}
    stats = rollout_stats(
        [str(s["origin"]) for s in rows],
        [[(str(c[0]), str(c[1])) for c in s["calls"]] for s in rows],
        [(float(d[0]), bool(d[1])) for s in rows for d in s["decisions"]],
        len(by_uid),
        n,
        [float(h) for s in rows for h in s.get("segment_entropy", [])],
    )
    dynamic = [s["dynamic"] for s in by_uid.values() if s.get("dynamic") is not None]
    if dynamic:  # AEPO's dynamic rollouts: one (H_root, H̄_tool, m) per prompt
        stats["agent/h_root_mean"] = float(np.mean([d[0] for d in dynamic]))
        stats["agent/h_tool_mean"] = float(np.mean([d[1] for d in dynamic]))
        stats["agent/dynamic_rollouts_min"] = float(min(d[2] for d in dynamic))
        stats["agent/dynamic_rollouts_max"] = float(max(d[2] for d in dynamic))
    iterations = [s["iterations"] for s in by_uid.values() if s.get("iterations") is not None]
    if iterations:  # AEPO's lock-step iterations (per agent-loop worker's batch; the largest)
        stats["agent/iterations"] = float(max(iterations))
        consecutive = [int(d[2]) for s in rows for d in s["decisions"] if len(d) > 2]
        stats["agent/consecutive_max"] = float(max(consecutive, default=0))  # the largest c a decision read
    return stats


def token_roles(summary: dict | None, length: int) -> np.ndarray:
    """A row's ROLE_* codes cut (or padded with ROLE_MODEL) to its response length."""
    from archer.core.trace.schema import ROLE_MODEL

    roles = np.full(length, ROLE_MODEL, dtype=np.int8)
    if summary is not None:
        r = np.asarray(summary.get("roles", []), dtype=np.int8)[:length]
        roles[: len(r)] = r
    return roles


def step_record(
    keys: Sequence[str],
    padding: np.ndarray,
    data: Any,
    *,
    max_response_length: int,
    influence: dict[int, np.ndarray] | None = None,
    accepted: Sequence[bool | None] | None = None,
) -> StepRecord:
    """The step's trace record (archer.core.rollout.record, the local engine's too), one entry
    per real response, grouped by prompt uid and ordered by session. `data` holds the step's rows
    in key order: prompts, responses, response_mask (the tokens that receive gradient), entropy
    (response-aligned), advantages, rm_scores, and optionally data_source and extra_fields."""
    prompts = nested_rows(data["prompts"])
    responses = nested_rows(data["responses"])
    mask = nested_rows(data["response_mask"])
    entropy = nested_rows(data["entropy"])
    advantages = nested_rows(data["advantages"])
    rewards = np.array([float(np.asarray(r, dtype=np.float64).sum()) for r in nested_rows(data["rm_scores"])])
    keys_in = data.keys() if hasattr(data, "keys") else []
    sources = as_list(data["data_source"]) if "data_source" in keys_in else None
    extras = as_list(data["extra_fields"]) if "extra_fields" in keys_in else None
    correct = correct_flags(extras, len(keys))
    agent = agent_summaries(extras, len(keys))

    parsed = [parse_key(k) for k in keys]
    order = sorted((i for i in range(len(keys)) if not padding[i]), key=lambda i: parsed[i])
    group_of = {u: g for g, u in enumerate(dict.fromkeys(parsed[i][0] for i in order))}

    def pick(seq: Sequence[Any]) -> list[Any]:
        return [seq[i] for i in order]

    return StepRecord(
        uid=[parsed[i][0] for i in order],
        group_index=[group_of[parsed[i][0]] for i in order],
        sample_index=[parsed[i][1] for i in order],
        prompt_ids=pick(prompts),
        response_ids=pick(responses),
        entropy=pick(entropy),
        advantages=pick(advantages),
        loss_mask=pick(mask),
        reward=rewards[order] if order else np.zeros(0),
        truncated=np.array([len(responses[i]) >= max_response_length for i in order], dtype=bool),
        correct=pick(correct) if correct is not None else None,
        accepted=pick(accepted) if accepted is not None else None,
        influence=[influence.get(i) for i in order] if influence is not None else None,
        data_source=[None if s is None else str(s) for s in pick(sources)] if sources is not None else None,
        token_role=[token_roles(agent[i], len(responses[i])) for i in order] if agent is not None else None,
    )


def val_accuracy(val_metrics: dict[str, Any]) -> float | None:
    """archer's `val/accuracy` from verl's validation metrics: the mean over data sources of
    `val-core/<source>/acc/mean@<n>` (the reward's `acc`, averaged over the n samples; the largest n
    verl reports), or of `.../reward/mean@<n>` where the reward reports no `acc`. None without either."""
    best: dict[str, tuple[int, float]] = {}
    for var in ("acc", "reward"):
        for key, value in val_metrics.items():
            parts = key.split("/")
            if (
                len(parts) != 4
                or parts[0] != "val-core"
                or parts[2] != var
                or not parts[3].startswith("mean@")
            ):
                continue
            try:
                n = int(parts[3][5:])
            except ValueError:
                continue
            if parts[1] not in best or n > best[parts[1]][0]:
                best[parts[1]] = (n, float(value))
        if best:
            break
    if not best:
        return None
    return sum(v for _, v in best.values()) / len(best)
