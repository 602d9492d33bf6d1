"""`archer influence check`: does influence predict what removing tokens from the loss does?

For a traced step of a local-engine run, the step's update is re-run from the state that went into
it — a pre-update snapshot kept by `influence.check_every`, or the regular checkpoint of the step
before — on the step's own batch, rebuilt from the trace (prompt and response ids, advantages,
acceptance; no extra bytes are stored for it). Once in full, then once per token set with that
set's loss weight set to 0 (`UpdateBatch.loss_weight`; the loss normalisers stay those of the full
batch), and each time the traced group's accepted-vs-rejected log-prob margin is measured after the
update. Token sets, predictions and statistics live in `archer.influence.counterfactual`.

The replay is checked: the on-policy update's own entropy must match the trace's (stored as
float16), which it does only when the snapshot and the batch are those of the step.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archer.core.engines.local import checkpoint as ckpt
from archer.core.engines.local.forward import make_micro_batch, response_logprobs, step_logprobs
from archer.core.engines.local.update import UpdateBatch, ppo_update
from archer.core.rollout.batch import Rollout, left_pad, right_pad
from archer.errors import ArcherError, DataError, UsageError
from archer.influence.counterfactual import (
    SET_KINDS,
    GroupTokens,
    TokenSet,
    group_margin,
    summarize,
    token_sets,
)

# the replayed update's entropy vs the trace's float16 entropy: a mismatch means the snapshot or
# the batch is not the step's
REPLAY_TOLERANCE = 2e-2


@dataclass
class CheckOptions:
    q: float = 10.0  # percent of a group's scored tokens per set
    draws: int = 4  # random sets per group
    max_groups: int = 8  # traced groups checked per step (0 = all)
    seed: int = 0
    dtype: str = "fp64"  # the replay's precision (fp64: margin differences far above rounding)
    device: str = "cpu"
    bootstrap: int = 1000
    # influence.* overrides: recompute the step's scores with these knobs inside the replayed full
    # update (same weights, same batch) instead of taking the trace's, to compare settings
    rescore: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepCheck:
    """One checked step: agreement, per-kind costs, and every set's predicted and measured cost."""

    step: int
    state: str  # which saved state the update was re-run from
    groups: int
    tokens: int  # scored tokens in the checked groups
    set_size_pct: float
    spearman: float
    ci_low: float
    ci_high: float
    sets: int
    order: list[str]
    top_costs_most: float
    kinds: list[dict[str, Any]]
    full_gain: dict[str, float]  # uid -> margin gain of the full update, M(θ_full) − M(θ₀)
    replay_entropy_err: float
    lr: float
    seconds: float
    set_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- what can be checked
def pre_update_state(run_dir: Path, step: int) -> tuple[Path, str] | None:
    """(folder, description) of the state going into step `step`'s update, or None."""
    snap = ckpt.snapshot_dir(run_dir, step)
    if (snap / ckpt.SNAPSHOT_FILE).is_file():
        return snap, f"pre-update snapshot {snap.relative_to(run_dir)}"
    prev = ckpt.checkpoint_dir(run_dir) / f"step_{step - 1:06d}"
    if step > 1 and (prev / ckpt.STATE_FILE).is_file():
        return prev, f"checkpoint {prev.relative_to(run_dir)} (after step {step - 1})"
    return None


def checkable_steps(run_dir: Path) -> tuple[list[int], list[int]]:
    """(steps with influence in the trace and a saved pre-update state, traced steps without one)."""
    from archer.core.trace import TraceReader

    reader = TraceReader(run_dir)
    ok, missing = [], []
    for s in reader.steps():
        info = reader.step_info(s)
        if not info.get("influence_rows", 1):
            continue
        (ok if pre_update_state(Path(run_dir), s) is not None else missing).append(s)
    return ok, missing


# --------------------------------------------------------------------------- the step's batch
@dataclass
class StepData:
    rollout: Rollout
    advantages: torch.Tensor  # [B, R] per token (outcome advantages broadcast over the loss mask)
    entropy: torch.Tensor  # [B, R] from the trace (float16 values)
    groups: list[GroupTokens]
    accepted: dict[int, list[bool]]  # group -> accepted flag per row of the group, in row order
    group_rows: dict[int, list[int]]
    uids: dict[int, str]
    rows: list[dict[str, Any]] = field(default_factory=list)  # the trace's rows, in batch order


def read_step(run_dir: Path, step: int, pad_id: int) -> StepData:
    """Rebuild step `step`'s rollout batch and the scored tokens of its traced groups from the trace."""
    from archer.core.trace import TraceReader
    from archer.core.trace.schema import ROLE_TOOL_RESULT, TOKEN_ROLE_COLUMN

    reader = TraceReader(run_dir)
    if step not in reader.steps():
        raise UsageError(
            f"step {step} is not in the trace of {run_dir}", hint="'archer trace info RUN' lists the steps"
        )
    t = reader.read_step(step).to_pylist()
    t.sort(key=lambda r: r["row"])
    if [r["row"] for r in t] != list(range(len(t))):
        raise DataError(
            f"step {step} of the trace does not hold every row of the batch: it cannot be replayed"
        )
    prompt_ids, prompt_mask = left_pad([r["prompt_ids"] for r in t], pad_id)
    responses = [torch.as_tensor(r["response_ids"], dtype=torch.long) for r in t]
    response_ids = right_pad(responses, pad_id)
    B, R = response_ids.shape
    lengths = torch.tensor([len(x) for x in responses])
    response_mask = (torch.arange(R)[None, :] < lengths[:, None]).long()
    loss_mask = None
    if any(r.get(TOKEN_ROLE_COLUMN) is not None for r in t):
        loss_mask = response_mask.clone()
        for i, r in enumerate(t):
            roles = r.get(TOKEN_ROLE_COLUMN)
            if roles is not None:
                loss_mask[i, : len(roles)] *= torch.as_tensor(roles) != ROLE_TOOL_RESULT
    rollout = Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        truncated=torch.tensor([bool(r["truncated"]) for r in t]),
        group=[int(r["group_index"]) for r in t],
        sample=[int(r["sample_index"]) for r in t],
        loss_mask=loss_mask,
    )
    adv_row = torch.tensor([float(r["advantage"]) for r in t], dtype=torch.float32)
    advantages = adv_row[:, None] * rollout.train_mask.float()
    entropy = torch.zeros((B, R), dtype=torch.float32)
    for i, r in enumerate(t):
        entropy[i, : len(r["entropy"])] = torch.tensor([float(x) for x in r["entropy"]])

    data = StepData(rollout, advantages, entropy, [], {}, {}, {}, rows=t)
    set_groups(data, [r["influence"] for r in t], [r["accepted"] for r in t])
    return data


def set_groups(data: StepData, influence: list[Any], accepted_col: list[bool | None]) -> None:
    """The scored tokens of the traced groups, from per-row influence and acceptance."""
    t, loss_mask, entropy = data.rows, data.rollout.loss_mask, data.entropy
    adv_row = torch.tensor([float(r["advantage"]) for r in t], dtype=torch.float32)
    groups: list[GroupTokens] = []
    accepted: dict[int, list[bool]] = {}
    group_rows: dict[int, list[int]] = {}
    uids: dict[int, str] = {}
    by_group: dict[int, list[int]] = {}
    for i, r in enumerate(t):
        by_group.setdefault(int(r["group_index"]), []).append(i)
    for g, rows in sorted(by_group.items()):
        if any(influence[i] is None or accepted_col[i] is None for i in rows):
            continue  # not traced (no contrast, or beyond max_prompts_per_step)
        acc = [bool(accepted_col[i]) for i in rows]
        if all(acc) or not any(acc):
            continue
        tr, tp, ts, sg, te = [], [], [], [], []
        for i in rows:
            infl = np.asarray(influence[i], dtype=np.float64)
            ok = np.flatnonzero(np.isfinite(infl))
            if loss_mask is not None:
                ok = ok[loss_mask[i, ok].numpy() > 0]
            tr += [i] * len(ok)
            tp += ok.tolist()
            ts += infl[ok].tolist()
            sg += [math.copysign(1.0, adv_row[i].item()) if adv_row[i] != 0 else 0.0] * len(ok)
            te += entropy[i, ok].double().tolist()
        if not tr:
            continue
        groups.append(
            GroupTokens(
                g,
                torch.tensor(tr, dtype=torch.long),
                torch.tensor(tp, dtype=torch.long),
                torch.tensor(ts, dtype=torch.float64),
                torch.tensor(sg, dtype=torch.float64),
                torch.tensor(te, dtype=torch.float64),
            )
        )
        accepted[g], group_rows[g], uids[g] = acc, rows, str(t[rows[0]]["uid"])
    data.groups, data.accepted, data.group_rows, data.uids = groups, accepted, group_rows, uids


# --------------------------------------------------------------------------- the replay
class Replay:
    """The model and optimizer in the state going into a step's update, restorable between runs."""

    def __init__(self, cfg: Any, run_dir: Path, state_dir: Path, *, dtype: torch.dtype, device: torch.device):
        from archer.core.export.checkpoints import load_model

        self.cfg, self.device = cfg, device
        self.model = load_model(state_dir, dtype="fp32", device="cpu").to(dtype).to(device)
        ocfg = cfg.actor.optim
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=ocfg.lr,
            betas=tuple(ocfg.betas),
            weight_decay=ocfg.weight_decay,
        )
        state_file = state_dir / ckpt.SNAPSHOT_FILE
        if not state_file.is_file():
            state_file = state_dir / ckpt.STATE_FILE
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])  # floating state cast to the params' dtype
        self.lr = float(self.optimizer.param_groups[0]["lr"])
        self.weights0 = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.opt0 = copy.deepcopy(self.optimizer.state_dict())
        self.ref_model = None
        if cfg.actor.use_kl_loss:
            self.ref_model = self._reference(cfg, run_dir, dtype)

    def _reference(self, cfg: Any, run_dir: Path, dtype: torch.dtype) -> Any:
        """The KL reference: the weights RL started from (the run's warm-up, else model.path)."""
        from archer.core.export.checkpoints import load_model

        for cand in (run_dir / "warmup", cfg.model.path):
            if cand and (Path(cand) / "config.json").is_file():
                m = load_model(Path(cand), dtype="fp32", device="cpu").to(dtype).to(self.device)
                m.requires_grad_(False)
                return m
        raise ArcherError(
            "the run uses a KL loss (actor.use_kl_loss) but its reference weights were not found",
            hint="the check needs <run>/warmup or model.path",
        )

    def restore(self) -> None:
        self.model.load_state_dict(self.weights0)
        self.optimizer.load_state_dict(copy.deepcopy(self.opt0))

    def update(
        self, data: StepData, loss_weight: torch.Tensor | None, micro_hook: Any = None
    ) -> torch.Tensor | None:
        """Re-run the step's update (as the trainer runs it) from the saved state; returns the
        on-policy entropy of the update's forward (None off-policy)."""
        cfg = self.cfg
        ro = data.rollout
        temperature = float(cfg.rollout.temperature)
        self.restore()
        old_logp, _, ref_logp = step_logprobs(
            self.model, self.ref_model, ro, cfg, with_entropy=False, device=self.device
        )
        _, entropy = ppo_update(
            self.model,
            self.optimizer,
            None,  # the learning rate of the step is the one saved in the optimizer's param groups
            UpdateBatch(
                rollout=ro,
                old_log_prob=old_logp,
                advantages=data.advantages,
                ref_log_prob=ref_logp,
                loss_weight=loss_weight,
            ),
            cfg.actor,
            group_size=int(cfg.rollout.n),
            temperature=temperature,
            device=self.device,
            micro_hook=micro_hook,
        )
        return entropy

    @torch.no_grad()
    def margins(self, data: StepData, groups: list[int], agg: str) -> dict[int, float]:
        """Each group's accepted-vs-rejected margin of summed log-probs under the current weights."""
        temperature = float(self.cfg.rollout.temperature)
        self.model.eval()
        out = {}
        mask = data.rollout.train_mask
        for g in groups:
            rows = torch.as_tensor(data.group_rows[g], dtype=torch.long)
            mb = make_micro_batch(data.rollout, rows, self.device)
            logp, _ = response_logprobs(self.model, mb, temperature=temperature, with_entropy=False)
            m = mask[rows, : mb.response_width].to(self.device, logp.dtype)
            out[g] = group_margin((logp * m).sum(-1).cpu(), data.accepted[g], agg)
        return out


# --------------------------------------------------------------------------- the check
def _run_config(run_dir: Path) -> Any:
    from omegaconf import OmegaConf

    from archer.core.export.checkpoints import read_run_config

    raw = read_run_config(run_dir)
    if raw is None:
        raise UsageError(f"{run_dir} has no config.yaml: not a run directory", hint="pass a run directory")
    cfg = OmegaConf.create(raw)
    if cfg.get("engine", "local") != "local":
        raise UsageError(
            f"'archer influence check' re-runs updates of the local engine; {run_dir} is a {cfg.engine} run",
            hint="the check is not available for verl runs yet",
        )
    return cfg


def check_step(
    run_dir: Path, step: int, options: CheckOptions | None = None, progress: Any = None
) -> StepCheck:
    """Re-run step `step`'s update in full and without each token set; measure the margins."""
    o = options or CheckOptions()
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    cfg = _run_config(run_dir)
    found = pre_update_state(run_dir, step)
    if found is None:
        raise UsageError(
            f"no saved state before step {step}'s update in {run_dir}",
            hint="train with influence.check_every=K (keeps the state before every K-th traced step), "
            f"or keep the checkpoint of step {step - 1} (trainer.save_every)",
        )
    state_dir, state_label = found
    dtype = {"fp64": torch.float64, "fp32": torch.float32}[o.dtype]
    device = torch.device(o.device)
    replay = Replay(cfg, run_dir, state_dir, dtype=dtype, device=device)
    pad = replay.model.config.pad_token_id
    data = read_step(run_dir, step, int(pad) if pad is not None else 0)
    if o.rescore:
        _rescore(cfg, replay, data, o.rescore)
    if not data.groups:
        raise DataError(f"step {step} has no traced group with scored tokens: nothing to check")
    groups = data.groups[: o.max_groups or None]
    agg = str(cfg.influence.get("contrastive_agg", "sum"))
    gen = torch.Generator().manual_seed(o.seed * 1_000_003 + step)
    sets: list[TokenSet] = [s for gt in groups for s in token_sets(gt, o.q, o.draws, gen)]
    by_group = {gt.group: gt for gt in groups}
    gids = [gt.group for gt in groups]

    if progress is not None:
        progress.start(len(sets) + 1, 0, label=f"step {step}", unit="updates")
    try:
        replay.restore()
        before = replay.margins(data, gids, agg)
        entropy = replay.update(data, None)
        full = replay.margins(data, gids, agg)
        if progress is not None:
            progress.advance(1, "full update")
        replay_err = float("nan")
        if entropy is not None:
            real = data.rollout.response_mask.bool()
            replay_err = float((entropy[real] - data.entropy[real]).abs().max())
            if replay_err > REPLAY_TOLERANCE:
                raise DataError(
                    f"the replayed update of step {step} does not reproduce the trace (entropy differs "
                    f"by {replay_err:.3g}): {state_label} is not the state that went into it",
                    hint="a checkpoint is usable only if it was saved right after the step before",
                )
        B, R = data.rollout.response_ids.shape
        for s in sets:
            gt = by_group[s.group]
            weight = torch.ones((B, R), dtype=torch.float32)
            weight[gt.rows[s.index], gt.positions[s.index]] = 0.0
            replay.update(data, weight)
            s.measured = full[s.group] - replay.margins(data, [s.group], agg)[s.group]
            if progress is not None:
                progress.advance(1, f"group {s.group} {s.kind}")
    finally:
        if progress is not None:
            progress.stop()
    full_gain = {g: full[g] - before[g] for g in gids}
    agree = summarize(sets, full_gain, reps=o.bootstrap, seed=o.seed)
    return StepCheck(
        step=step,
        state=state_label,
        groups=len(groups),
        tokens=sum(len(gt) for gt in groups),
        set_size_pct=o.q,
        spearman=agree.spearman,
        ci_low=agree.ci_low,
        ci_high=agree.ci_high,
        sets=agree.sets,
        order=agree.order,
        top_costs_most=agree.top_costs_most,
        kinds=[asdict(k) for k in agree.kinds],
        full_gain={data.uids[g]: v for g, v in full_gain.items()},
        replay_entropy_err=replay_err,
        lr=replay.lr,
        seconds=time.perf_counter() - t0,
        set_rows=[
            {
                "group": data.uids[s.group],
                "kind": s.kind,
                "draw": s.draw,
                "tokens": int(s.index.numel()),
                "predicted": s.predicted,
                "measured": s.measured,
            }
            for s in sets
        ],
    )


def _rescore(cfg: Any, replay: Replay, data: StepData, overrides: dict[str, Any]) -> None:
    """Trace a replay of the full update with the run's influence knobs plus `overrides` and put
    those scores into `data` in place of the trace's."""
    from omegaconf import OmegaConf

    from archer.core.engines.local.influence_step import LocalInfluence
    from archer.influence.settings import InfluenceSettings

    base = OmegaConf.to_container(cfg.influence, resolve=True)
    unknown = [k for k in overrides if k not in InfluenceSettings.__dataclass_fields__]
    if unknown:
        raise UsageError(f"unknown influence setting(s) {unknown}", hint="see docs/influence.md, Knobs")
    settings = InfluenceSettings.from_mapping({**base, **overrides, "enable": True})
    try:
        settings.validate()
    except ValueError as e:
        raise UsageError(str(e), hint="see docs/influence.md, Knobs") from e
    if not settings.output.in_training_backward:
        raise UsageError(
            "rescoring works for influence.output_function=training_loss only",
            hint="drop output_function from the overrides",
        )
    ro, t = data.rollout, data.rows
    infl = LocalInfluence(replay.model, settings)
    try:
        infl.begin(
            ro,
            torch.tensor([float(r["reward"]) for r in t]),
            torch.tensor([float(r["advantage"]) for r in t]),
            [str(r["uid"]) for r in t],
            correct=[r["correct"] for r in t],
        )
        replay.update(data, None, micro_hook=infl.micro_hook)
        accepted = infl.accepted
        rows, _ = infl.finish()
    finally:
        infl.tracer.close()
    set_groups(data, rows, accepted)


def save_results(run_dir: Path, checks: list[StepCheck], options: CheckOptions) -> Path:
    """Merge these steps' results into <run>/influence_check.json (read by `archer collect`)."""
    from archer.core.influence_results import save_results as _save

    return _save(run_dir, {c.step: {**c.to_dict(), "options": asdict(options)} for c in checks})


__all__ = [
    "SET_KINDS",
    "CheckOptions",
    "StepCheck",
    "check_step",
    "checkable_steps",
    "pre_update_state",
    "save_results",
]
