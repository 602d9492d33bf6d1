"""Influence capture inside verl's training worker, on the real PPO backward of the first epoch.

Per `train_mini_batch`:
  1. `begin(data)`: this rank's rows that the driver selected (tensor fields `archer_row`,
     `archer_group`, `archer_accepted`, `archer_sign`, carried through verl's balancing,
     shuffling, dynamic batching and the DP split with every other field) become the tracer's
     responses. Row ids are global, so groups split across ranks are gathered, not dropped.
  2. `before_forward(micro_batch)`, from the engine's wrapped `forward_step`: closes the previous
     micro-batch (its backward has run by then), then opens this one with the positions of its own
     rows (`archer_row` of each micro-batch row, never its order) and the loss normaliser verl
     used for it, so captured gradients are those of the summed loss as in the local engine.
  3. `end_mini_batch()` after each mini-batch; capture stops after the first epoch.
  4. `finish()`: scores (all ranks, collectively) -> per-row float32 arrays and metrics.

`training_loss` is captured inside the update itself. The other output functions
(archer.influence.outputs) are captured by `separate_backward` before the update: one extra
forward+backward of O = Σ w·log p over this rank's rows through verl's own engine
(`forward_backward_batch`, so FSDP, packing and dynamic batching are verl's), whose parameter
gradients the update's `train_batch` then zeroes before its own.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import numpy as np
import torch

from archer.influence.scoring import ResponseMeta
from archer.influence.settings import InfluenceSettings
from archer.influence.tracer import InfluenceTracer, packed_positions

ROW_FIELDS = ("archer_row", "archer_group", "archer_accepted", "archer_sign", "archer_reward")
PG_TIMEOUT_ENV = "ARCHER_PG_TIMEOUT_SECONDS"
DEFAULT_PG_TIMEOUT_S = 1800


def _non_tensor(data: Any, key: str, default: Any = None) -> Any:
    from verl.utils import tensordict_utils as tu

    return tu.get_non_tensor_data(data=data, key=key, default=default)


def _lengths(t: torch.Tensor) -> torch.Tensor:
    return t.offsets().diff() if t.is_nested else torch.full((t.shape[0],), t.shape[1], dtype=torch.long)


def sequence_layout(micro_batch: Any) -> tuple[list[int], list[int], list[int]]:
    """(start of each row in the model's flattened token axis, prompt lengths, response lengths).

    With remove-padding the micro-batch is packed (row k starts at `input_ids.offsets()[k]`);
    without it the engine right-pads every row to the longest sequence of the micro-batch."""
    P = _lengths(micro_batch["prompts"])
    R = _lengths(micro_batch["responses"])
    seq = P + R
    input_ids = micro_batch["input_ids"]
    if input_ids.is_nested and not torch.equal(_lengths(input_ids).cpu(), seq.cpu()):
        raise RuntimeError("influence capture: prompt + response lengths disagree with input_ids")
    if _non_tensor(micro_batch, "use_remove_padding", True):
        starts = input_ids.offsets()[:-1] if input_ids.is_nested else torch.cumsum(seq, 0) - seq
    else:
        starts = torch.arange(len(seq)) * int(seq.max())
    return starts.tolist(), P.tolist(), R.tolist()


def loss_normaliser(micro_batch: Any, loss_agg_mode: str, loss_scale_factor: float | None = None) -> float:
    """N such that the loss verl backpropagates for this micro-batch on this rank is Σ(...)/N.

    verl's agg_loss returns Σ/N_global·dp_size (token-mean: N = mini-batch tokens over all ranks;
    seq-mean-*: N = mini-batch sequences), so N = N_global/dp_size; `seq-mean-token-sum-norm`
    also divides by `loss_scale_factor` (or the micro-batch's response width), `token-sum` by
    nothing (Σ·dp_size)."""
    dp = float(_non_tensor(micro_batch, "dp_size", 1) or 1)
    if loss_agg_mode == "token-mean":
        tokens = _non_tensor(micro_batch, "batch_num_tokens")
        if tokens is None:
            tokens = float(
                micro_batch["loss_mask"].values().sum()
                if micro_batch["loss_mask"].is_nested
                else micro_batch["loss_mask"].sum()
            )
        return float(tokens) / dp
    if loss_agg_mode == "token-sum":
        return 1.0 / dp
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        seqs = _non_tensor(micro_batch, "global_batch_size")
        if seqs is None:
            seqs = float(len(micro_batch))
        n = float(seqs) / dp
        if loss_agg_mode == "seq-mean-token-sum-norm":
            n *= float(
                loss_scale_factor
                if loss_scale_factor is not None
                else int(_lengths(micro_batch["responses"]).max())
            )
        return n
    raise ValueError(f"influence capture does not know loss_agg_mode {loss_agg_mode!r}")


def influence_group(world_group: Any) -> Any:
    """A gloo group over the data-parallel ranks for the small influence gathers, with its own
    timeout (ARCHER_PG_TIMEOUT_SECONDS, default 1800 s): scoring runs between collectives, and a
    long step must not trip the NCCL group's timeout."""
    import torch.distributed as dist

    seconds = float(os.environ.get(PG_TIMEOUT_ENV, DEFAULT_PG_TIMEOUT_S))
    ranks = dist.get_process_group_ranks(world_group) if world_group is not None else None
    return dist.new_group(ranks=ranks, backend="gloo", timeout=datetime.timedelta(seconds=seconds))


class InfluenceCaptureError(RuntimeError):
    """Influence capture failed on some data-parallel rank (raised on all of them)."""


class WorkerInfluence:
    """Owns the tracer on the engine's module; driven by `ArcherTrainingWorker`."""

    def __init__(
        self,
        module: torch.nn.Module,
        settings: InfluenceSettings,
        *,
        loss_agg_mode: str,
        loss_scale_factor: float | None,
        group: Any = None,
    ):
        self.settings = settings
        self.output = settings.output
        self.tracer = InfluenceTracer(module, settings)
        self.loss_agg_mode = loss_agg_mode
        self.loss_scale_factor = loss_scale_factor
        self.group = group
        self.active = False
        self._open = False
        self._minis_left = 0
        self._separate = False
        self.error: tuple[float, str] | None = None  # this rank's first capture error of the step
        self.tracer.recorder.on_error = self._fail

    # ------------------------------------------------------------------ one train_mini_batch
    def begin(self, data: Any, mini_batches_per_epoch: int) -> None:
        missing = [f for f in ROW_FIELDS if f not in data.keys()]
        if missing:
            raise RuntimeError(
                f"influence capture needs the driver's row fields {missing} in the batch "
                "(the archer_sync trainer adds them)"
            )
        rows = data["archer_row"].tolist()
        groups = data["archer_group"].tolist()
        accepted = data["archer_accepted"].tolist()
        signs = data["archer_sign"].tolist()
        lengths = _lengths(data["responses"]).tolist()
        metas, selected = [], {}
        for r, g, a, s, L in zip(rows, groups, accepted, signs, lengths):
            if r >= 0 and g >= 0:
                metas.append(ResponseMeta(row=int(r), group=int(g), accepted=bool(a), sign=float(s)))
                selected[int(r)] = int(L)
        self.tracer.begin_step(metas, selected)
        self._minis_left = mini_batches_per_epoch
        self.active = True

    def _fail(self, error: BaseException) -> None:
        """A capture error on this rank: remember the first, stop capturing for the step, and let
        the update run on (its collectives need every rank); `finish` raises it on every rank."""
        if self.error is None:
            self.error = (time.time(), f"{type(error).__name__}: {error}")
        self._open = False
        self.tracer.recorder.abandon_micro()

    def before_forward(self, micro_batch: Any) -> None:
        if not self.active or self.error is not None:
            return
        try:
            self._before_forward(micro_batch)
        except Exception as e:  # noqa: BLE001 - raised on every rank by finish()
            self._fail(e)

    def _before_forward(self, micro_batch: Any) -> None:
        self._close()
        if self._minis_left <= 0:
            return
        if not self._separate and not self.output.in_training_backward:
            return  # captured by separate_backward; the update itself is not traced
        starts, P, R = sequence_layout(micro_batch)
        pos, rid, tok = packed_positions(
            micro_batch["archer_row"].tolist(),
            starts,
            P,
            R,
            selected=self.tracer.selected(),
            max_tokens=self.settings.max_tokens_per_response,
        )
        if self._separate:  # the pass backpropagates -O: flip it back to the gradient of O
            scale = -1.0
        else:  # the update backpropagates L/N: the captured gradient becomes that of -L
            scale = -loss_normaliser(micro_batch, self.loss_agg_mode, self.loss_scale_factor)
        self.tracer.recorder.begin_micro(pos, rid, tok, grad_scale=scale)
        self._open = True

    def separate_backward(self, engine: Any, data: Any) -> None:
        """Capture an output function other than the training loss: one forward+backward of
        −O over this rank's rows (every rank takes part: verl's engine reduces across them), with
        O = Σ_t w_t·log p_t over the tokens that receive gradient of the traced rows (others
        weigh 0). The parameters' gradients it leaves are zeroed by the update's `train_batch`."""
        if not self.active or self.output.in_training_backward:
            return
        self._separate = True
        self._minis_left = 1
        try:
            with engine.train_mode():
                engine.forward_backward_batch(data, loss_function=self._objective_loss, forward_only=False)
            self._close()
        finally:
            self._separate = False
            self._minis_left = 0
        engine.optimizer_zero_grad()

    def _objective_loss(self, model_output: dict, data: Any, dp_group: Any = None):
        from verl.workers.utils.padding import no_padding_2_padding

        log_probs = no_padding_2_padding(model_output["log_probs"], data)
        padded = data.select("response_mask", "advantages").to_padded_tensor()
        traced = (data["archer_group"] >= 0).to(log_probs.device, log_probs.dtype)[:, None]
        mask = padded["response_mask"].to(log_probs.dtype) * traced
        rewards = data["archer_reward"].to(log_probs.device, log_probs.dtype)
        objective = self.output.objective(log_probs, mask, padded["advantages"], rewards)
        return -objective, {}

    def end_mini_batch(self) -> None:
        self._close()
        self._minis_left -= 1

    def _close(self) -> None:
        if self._open:
            self._open = False
            try:
                self.tracer.recorder.end_micro()
            except Exception as e:  # noqa: BLE001 - "capture incomplete": raised on every rank by finish()
                self._fail(e)

    def abort(self) -> None:
        """Forget a half-done step (the update raised)."""
        self._open = False
        self.tracer.recorder.abandon_micro()
        self.active = False
        self.error = None

    def agree_on_errors(self) -> None:
        """Every rank learns whether any rank's capture failed (one small gather over the influence
        group) and, if one did, all raise the earliest error, naming its rank: no rank goes on into
        the scoring collectives while another has left."""
        import torch.distributed as dist

        mine, self.error = self.error, None
        if not (dist.is_available() and dist.is_initialized()):
            failures = [(mine, 0)] if mine else []
        else:
            gathered: list[Any] = [None] * dist.get_world_size(self.group)
            dist.all_gather_object(gathered, (mine, dist.get_rank()), group=self.group)
            failures = [(err, rank) for err, rank in gathered if err is not None]
        if failures:
            (_, message), rank = min(failures, key=lambda f: f[0][0])
            others = sorted(r for _, r in failures if r != rank)
            also = f" (ranks {others} failed too)" if others else ""
            raise InfluenceCaptureError(f"influence capture failed on rank {rank}{also}: {message}")

    def finish(self) -> tuple[dict[int, np.ndarray], dict[str, float]]:
        """Score (collective over the DP ranks) -> {row: float32 scores, NaN = not captured}, metrics.
        A capture error on any rank raises here, on every rank (agree_on_errors)."""
        from archer.influence.distributed import ProcessGroupComm

        self._close()
        self.active = False
        self.agree_on_errors()
        self.tracer.comm = ProcessGroupComm(self.group)
        per_row, metrics = self.tracer.finish_step()
        return {int(r): v.to(torch.float32).numpy() for r, v in per_row.items()}, metrics

    def close(self) -> None:
        self.tracer.close()
