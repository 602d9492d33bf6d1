"""The step-level influence tracer that the engines drive.

Per training step:
  1. `begin_step(metas, lengths)` names the selected responses (row id, group, accepted, σ).
  2. For each micro-batch that holds selected rows, `micro(...)` wraps its forward and backward
     (`training_loss`: inside the real PPO backward of the first epoch), or
     `separate_backward(...)` runs one extra forward+backward of another output function with
     `torch.autograd.grad`, so the parameters' `.grad` stays untouched.
  3. `finish_step()` scores the captured tokens and returns per-row arrays (NaN where a token
     was not captured) and the metrics.

Positions: token t of a response is captured at the position whose logits predict it. The helpers
`padded_positions` and `packed_positions` compute those flat indices for the two batch layouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from archer.influence.capture import InfluenceRecorder
from archer.influence.outputs import get_output_function
from archer.influence.scoring import (
    ResponseMeta,
    estimate_memory_bytes,
    scatter_to_rows,
    scope_units,
    score_tokens,
)
from archer.influence.settings import InfluenceSettings


class InfluenceMemoryError(ValueError):
    """Exact influence (`projection=identity`) of this step would not fit in the memory left."""

    def __init__(self, message: str, needed: int, available: int):
        super().__init__(message)
        self.needed = needed
        self.available = available


def available_memory_bytes(device: torch.device | str) -> int:
    """Memory a new allocation can still get on `device`: free GPU memory plus what PyTorch's
    caching allocator holds unused; on the CPU, the kernel's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def response_sign(output_function: str, advantage: float, reward: float) -> float:
    """σ_r, the sign an output function puts on a response (see scoring.py and outputs.py)."""
    return get_output_function(output_function).sign(advantage, reward)


def token_subsample(length: int, cap: int) -> torch.Tensor:
    """Indices of the tokens to capture: all, or `cap` evenly spaced ones (first and last kept)."""
    if cap <= 0 or length <= cap:
        return torch.arange(length)
    return torch.linspace(0, length - 1, cap).round().long().unique()


def _positions(
    rows: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    selected: dict[int, int] | None,
    max_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat positions, row ids, token indices): token t of row r sits at starts[k] + t."""
    pos, rid, tok = [], [], []
    for r, start, L in zip(rows, starts, lengths):
        if selected is not None and r not in selected:
            continue
        t = token_subsample(int(L), max_tokens)
        pos.append(int(start) + t)
        rid.append(torch.full_like(t, int(r)))
        tok.append(t)
    if not pos:
        z = torch.zeros(0, dtype=torch.long)
        return z, z, z
    return torch.cat(pos), torch.cat(rid), torch.cat(tok)


def padded_positions(
    rows: Sequence[int],
    row_offsets: Sequence[int],
    lengths: Sequence[int],
    *,
    seq_len: int,
    prompt_width: int,
    selected: dict[int, int] | None = None,
    max_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat positions over a [b, seq_len] micro-batch whose responses start at column `prompt_width`.

    rows: global row id of each micro-batch row; row_offsets: its index within the micro-batch;
    lengths: response length of each; selected: rows to capture (None = all)."""
    starts = [i * seq_len + prompt_width - 1 for i in row_offsets]
    return _positions(rows, starts, lengths, selected, max_tokens)


def packed_positions(
    rows: Sequence[int],
    cu_seqlens: Sequence[int],
    prompt_lengths: Sequence[int],
    lengths: Sequence[int],
    *,
    selected: dict[int, int] | None = None,
    max_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat positions over a packed (remove-padding) micro-batch: sequence k occupies
    [cu_seqlens[k], cu_seqlens[k+1]) and its response starts after prompt_lengths[k] tokens."""
    starts = [int(cu_seqlens[k]) + int(P) - 1 for k, P in enumerate(prompt_lengths)]
    return _positions(rows, starts, lengths, selected, max_tokens)


def warm_up_solvers(device: torch.device) -> None:
    """Pay the GPU solver library's first-call cost at set-up: on an H100 the first cuSOLVER call
    took 0.19-0.21 s, which landed in the first traced update of every launch (11 % over it)."""
    if device.type != "cuda":
        return
    A = torch.eye(2, dtype=torch.float64, device=device) * 2
    b = torch.ones((2, 1), dtype=torch.float64, device=device)
    torch.linalg.solve(A, b)
    L = torch.linalg.cholesky(A)
    torch.cholesky_solve(b, L)
    torch.cholesky_inverse(L)
    torch.cuda.synchronize(device)


class InfluenceTracer:
    """Owns the recorder for one model and turns a step's captures into per-token scores."""

    def __init__(
        self,
        model: nn.Module,
        settings: InfluenceSettings,
        *,
        identity_projection: bool = False,
        comm: Any = None,
    ):
        settings.validate()
        self.settings = settings
        self.recorder = InfluenceRecorder(model, settings, identity_projection=identity_projection)
        self.comm = comm
        self.metas: list[ResponseMeta] = []
        self.lengths: dict[int, int] = {}
        self.timings: dict[str, float] = {}
        self._capture_seconds = 0.0
        warm_up_solvers(self.scoring_device())

    @property
    def active(self) -> bool:
        return bool(self.metas)

    def selected(self) -> dict[int, int]:
        return {m.row: self.lengths.get(m.row, 0) for m in self.metas}

    def begin_step(self, metas: Sequence[ResponseMeta], lengths: dict[int, int]) -> None:
        """Name the step's selected responses. In exact mode (`projection=identity`) the step's
        memory is estimated first and the step refused (InfluenceMemoryError) when it would not fit."""
        self.recorder.reset()
        self.metas = list(metas)
        self.lengths = {int(r): int(L) for r, L in lengths.items()}
        self.timings = {}
        self._capture_seconds = 0.0
        if self.settings.exact and self.metas:
            self._check_exact_fits()

    def scoring_device(self) -> torch.device:
        s = self.settings
        if s.grad_offload_to_cpu and not s.force_gpu_compute:
            return torch.device("cpu")
        if s.force_gpu_compute and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return self.recorder.device

    def memory_estimate(
        self, metas: Sequence[ResponseMeta], tokens_per_row: dict[int, int]
    ) -> dict[str, int]:
        """estimate_memory_bytes for these responses, given the captured tokens of each row."""
        units, _ = scope_units(metas, self.settings.accepted_rejected_scope)
        sizes = [(len(u), sum(tokens_per_row.get(m.row, 0) for m in u)) for u in units]
        cb = 8 if self.recorder.compute_dtype == torch.float64 else 4
        return estimate_memory_bytes(
            self.recorder.dims,
            sizes,
            len(metas),
            sum(tokens_per_row.get(m.row, 0) for m in metas),
            self.settings,
            compute_bytes=cb,
        )

    def _check_exact_fits(self) -> None:
        cap = self.settings.max_tokens_per_response
        tokens = {r: (min(L, cap) if cap > 0 else L) for r, L in self.lengths.items()}
        est = self.memory_estimate(self.metas, tokens)
        needed = est["factors"] + est["scoring"]
        device = self.scoring_device()
        available = available_memory_bytes(device)
        if needed > available:
            gib = 2**30
            n_tok = sum(tokens.values())
            raise InfluenceMemoryError(
                f"influence.projection=identity (exact) needs about {needed / gib:.1f} GiB for this step "
                f"({est['factors'] / gib:.1f} GiB of full-dimension factors for {n_tok} tokens "
                f"and {len(self.recorder.names)} modules, {est['scoring'] / gib:.1f} GiB to score the "
                f"largest module) but {available / gib:.1f} GiB is free on {device}; trace fewer modules "
                "(influence.module_name_filter / max_modules), fewer groups or tokens "
                "(influence.max_prompts_per_step / max_tokens_per_response), or use a random projection",
                needed,
                available,
            )

    @contextmanager
    def micro(
        self, positions: torch.Tensor, rows: torch.Tensor, token_index: torch.Tensor, grad_scale: float = 1.0
    ) -> Iterator[None]:
        """Wrap one micro-batch's forward and backward (or `autograd.grad`)."""
        with self.recorder.micro(positions, rows, token_index, grad_scale):
            yield

    def separate_backward(
        self,
        forward: Callable[[], torch.Tensor],
        positions: torch.Tensor,
        rows: torch.Tensor,
        token_index: torch.Tensor,
    ) -> None:
        """Capture the gradients of an output function O = forward() with one extra backward that
        reaches the traced modules' outputs only (`torch.autograd.grad`), leaving `.grad` alone."""
        if positions.numel() == 0:
            return
        t0, h0 = time.perf_counter(), self.recorder.hook_seconds
        self.recorder.begin_micro(positions, rows, token_index, 1.0, keep_outputs=True)
        try:
            with torch.enable_grad():
                objective = forward()
                outputs = self.recorder.captured_outputs()
                if outputs:
                    torch.autograd.grad(objective, outputs, allow_unused=True)
            self.recorder.end_micro()
        except BaseException:
            self.recorder.abandon_micro()
            raise
        # the extra pass is overhead as a whole; its hook time is already in recorder.hook_seconds
        self._capture_seconds += (time.perf_counter() - t0) - (self.recorder.hook_seconds - h0)

    def finish_step(
        self, *, compute_device: torch.device | str | None = None
    ) -> tuple[dict[int, torch.Tensor], dict[str, float]]:
        """Scores per selected row (the compute dtype, NaN = not captured) and the step's metrics."""
        s = self.settings
        captured = self.recorder.captured()
        dev = compute_device
        if dev is None and s.grad_offload_to_cpu and not s.force_gpu_compute:
            dev = "cpu"
        if dev is None and s.force_gpu_compute and torch.cuda.is_available():
            dev = "cuda"
        factor_bytes = self.recorder.memory_bytes()
        tokens_per_row: dict[int, int] = {}
        for r in captured.rows.tolist():
            tokens_per_row[r] = tokens_per_row.get(r, 0) + 1
        scoring_bytes = self.memory_estimate(self.metas, tokens_per_row)["scoring"] if self.metas else 0
        result = score_tokens(
            captured, self.metas, s, compute_device=dev, comm=self.comm, timings=self.timings
        )
        per_row = scatter_to_rows(result.scores, captured, self.selected())
        rows_emitted = sum(1 for v in per_row.values() if bool(torch.isfinite(v).any()))
        D = max(self.recorder.module_dims) if self.recorder.module_dims else 0
        metrics = {
            "influence/rows_emitted": float(rows_emitted),
            "influence/groups_selected": result.metrics["groups_selected"],
            "influence/groups_skipped_all_same": result.metrics["groups_skipped_all_same"],
            "influence/tokens_captured": float(captured.num_tokens),
            "influence/modules": float(len(self.recorder.names)),
            "influence/max_module_dim": float(D),
            "influence/peak_memory_estimate_mb": (factor_bytes + scoring_bytes) / 2**20,
        }
        if s.profile_timing:
            metrics["timing_s/influence_capture"] = self._capture_seconds + self.recorder.hook_seconds
            metrics["timing_s/influence_solve"] = self.timings.get("solve", 0.0)
            metrics["timing_s/influence_score"] = self.timings.get("score", 0.0)
        self.recorder.reset()
        self.metas = []
        return per_row, metrics

    def close(self) -> None:
        self.recorder.remove()
