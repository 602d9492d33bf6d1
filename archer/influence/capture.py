"""Capture of per-token projected gradient factors from a model's real backward pass.

For each selected `nn.Linear` a forward hook projects the input, v = P_in·x, at the positions the
current micro-batch asks for, and registers a tensor hook on the module *output* that projects the
gradient arriving there, u = P_out·∂L/∂y. Tensor hooks on outputs (rather than module backward
hooks) fire whether or not the module's input needs a gradient, and they fire for gradients
computed by `torch.autograd.grad` too, which leaves `.grad` of the parameters untouched.

The recorder knows nothing about padding or packing: a micro-batch context gives flat indices
into the module's leading dimensions (batch×length for padded inputs, the packed token axis for
remove-padding inputs), the row id and response-token index of each, and the loss scale to
divide out. Gradient checkpointing re-runs forward hooks during the backward; those re-runs are
recognised (an autograd graph task is running) and ignored, so nothing is captured twice.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from archer.influence.projection import pick_projection_dims, projection_matrix
from archer.influence.settings import InfluenceSettings

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def clean_module_name(name: str) -> str:
    """Drop FSDP / activation-checkpoint / torch.compile / DDP wrapper segments from a module name."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def select_modules(model: nn.Module, pattern: str, max_modules: int) -> list[tuple[str, nn.Linear]]:
    """The `nn.Linear` modules whose cleaned name matches `pattern` (regex search); with
    `max_modules > 0` only the last N matches in module order are kept. The LM head is never
    traced: engines compute its logits for the response positions only, so its input does not
    cover the sequence the capture positions index."""
    rx = re.compile(pattern)
    found = [
        (clean_module_name(n), m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not clean_module_name(n).endswith("lm_head")
    ]
    found = [(n, m) for n, m in found if rx.search(n)]
    if max_modules > 0:
        found = found[-max_modules:]
    return found


def _in_backward() -> bool:
    """True while autograd runs a backward (e.g. a checkpoint recompute calls forward hooks)."""
    return torch._C._current_graph_task_id() != -1


@dataclass
class ModuleFactors:
    """Captured factors of one module: u [N, k_out], v [N, k_in] (row-aligned with the tokens)."""

    name: str
    k_in: int
    k_out: int
    u: torch.Tensor
    v: torch.Tensor

    @property
    def dim(self) -> int:
        return self.k_in * self.k_out


@dataclass
class CapturedFactors:
    """Everything captured since the last reset: token identities and per-module factors."""

    rows: torch.Tensor  # [N] long: row id of each captured token
    token_index: torch.Tensor  # [N] long: index of the token within its response
    modules: list[ModuleFactors] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.rows.numel())


class _Slot:
    """Per-module, per-micro-batch buffers."""

    __slots__ = ("v", "u", "output")

    def __init__(self) -> None:
        self.v: torch.Tensor | None = None
        self.u: torch.Tensor | None = None
        self.output: torch.Tensor | None = None


class InfluenceRecorder:
    """Hooks on the selected modules that capture projected factors inside `micro()` contexts."""

    def __init__(self, model: nn.Module, settings: InfluenceSettings, *, identity_projection: bool = False):
        self.settings = settings
        # exact mode: full-dimension factors, no projection product at all
        identity_projection = identity_projection or settings.projection == "identity"
        self.identity_projection = identity_projection
        selected = select_modules(model, settings.module_name_filter, settings.max_modules)
        if not selected:
            raise ValueError(
                f"influence.module_name_filter={settings.module_name_filter!r} matches no nn.Linear module"
            )
        self.names: list[str] = []
        self.dims: list[tuple[int, int]] = []
        self._proj: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self._handles: list[Any] = []
        for idx, (name, mod) in enumerate(selected):
            d_in, d_out = mod.in_features, mod.out_features
            if identity_projection:
                k_in, k_out = d_in, d_out
            else:
                k_in, k_out = pick_projection_dims(
                    d_in,
                    d_out,
                    factor=settings.projection_dim_factor,
                    max_vector_sum=settings.max_proj_vector_sum,
                    max_hessian_dim=0,
                )
            D = k_in * k_out
            if (
                not identity_projection  # exact mode is checked against memory per step (tracer)
                and settings.max_hessian_dim > 0
                and D > settings.max_hessian_dim
                and settings.hessian_mode == "inverse"
            ):
                raise ValueError(
                    f"influence: module {name} would need a {D}x{D} Hessian ({8 * D * D / 2**30:.2f} GiB at "
                    "8·D² bytes), "
                    f"above influence.max_hessian_dim={settings.max_hessian_dim}; raise the cap or the "
                    "projection factor"
                )
            self.names.append(name)
            self.dims.append((k_in, k_out))
            if identity_projection:
                self._proj.append(None)
            else:
                p_in = projection_matrix(name, "in", k_in, d_in, kind=settings.projection)
                p_out = projection_matrix(name, "out", k_out, d_out, kind=settings.projection)
                self._proj.append((p_in, p_out))
            self._handles.append(mod.register_forward_hook(self._make_forward_hook(idx)))
        self._device = selected[0][1].weight.device
        # factors are computed in float64 for a float64 model, in float32 otherwise
        self.compute_dtype = torch.float64 if selected[0][1].weight.dtype == torch.float64 else torch.float32
        self._storage_dtype = torch.bfloat16 if settings.storage_dtype == "bf16" else torch.float32
        self._ctx: dict[str, Any] | None = None
        self._slots: list[_Slot] = []
        self._keep_outputs = False
        self._copies: list[Any] = []  # CUDA events after non-blocking device-to-host copies
        # None: a hook's error raises through the model's forward/backward (one process). Set (by
        # a data-parallel engine), it receives the error instead and capture stops for the
        # micro-batch, so this rank finishes its collectives with the others and fails with them.
        self.on_error: Any = None
        self.reset()

    # ---------------------------------------------------------------- bookkeeping
    def reset(self) -> None:
        """Forget everything captured (call at the start of each training step)."""
        self._rows: list[torch.Tensor] = []
        self._tok: list[torch.Tensor] = []
        self._u: list[list[torch.Tensor]] = [[] for _ in self.names]
        self._v: list[list[torch.Tensor]] = [[] for _ in self.names]
        self.tokens_captured = 0
        self.micro_batches = 0
        self.hook_seconds = 0.0
        self._copies = []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def module_dims(self) -> list[int]:
        return [a * b for a, b in self.dims]

    @property
    def device(self) -> torch.device:
        """Where the traced modules' weights live (the default scoring device)."""
        return self._device

    def _projections(
        self, idx: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(P_in, P_out) on `device`, or None for the identity (exact) projection."""
        if self._proj[idx] is None:
            return None
        p_in, p_out = self._proj[idx]
        if p_in.device != device or p_in.dtype != dtype:
            p_in, p_out = p_in.to(device=device, dtype=dtype), p_out.to(device=device, dtype=dtype)
            self._proj[idx] = (p_in, p_out)
        return p_in, p_out

    # ---------------------------------------------------------------- micro-batch context
    def begin_micro(
        self,
        positions: torch.Tensor,
        rows: torch.Tensor,
        token_index: torch.Tensor,
        grad_scale: float = 1.0,
        keep_outputs: bool = False,
    ) -> None:
        """Capture at `positions` (flat indices over the module's leading dims) during the next
        forward and backward. `grad_scale` multiplies the captured output gradients (pass the
        loss normaliser, e.g. the mini-batch token count, to undo token-mean scaling)."""
        if self._ctx is not None:
            raise RuntimeError("begin_micro called twice without end_micro")
        positions = positions.long()
        self._ctx = {
            "positions": positions,
            "scale": float(grad_scale),
            "device_positions": {},
            "max_position": int(positions.max()) if positions.numel() else -1,
        }
        self._slots = [_Slot() for _ in self.names]
        self._keep_outputs = keep_outputs
        self._pending_rows = rows.long().cpu()
        self._pending_tok = token_index.long().cpu()

    def end_micro(self) -> None:
        """Close the context: every module must have delivered both factors (or none at all,
        when the micro-batch had no selected tokens)."""
        if self._ctx is None:
            raise RuntimeError("end_micro without begin_micro")
        n = int(self._ctx["positions"].numel())
        try:
            if n:
                missing = [self.names[i] for i, s in enumerate(self._slots) if s.v is None or s.u is None]
                if missing:
                    raise RuntimeError(
                        "influence capture incomplete for "
                        + ", ".join(missing[:3])
                        + (" …" if len(missing) > 3 else "")
                        + ": the forward did not run, or no gradient reached these modules"
                    )
                for i, s in enumerate(self._slots):
                    self._v[i].append(s.v)
                    self._u[i].append(s.u)
                self._rows.append(self._pending_rows)
                self._tok.append(self._pending_tok)
                self.tokens_captured += n
                self.micro_batches += 1
        finally:
            self._drop_slots()

    def _drop_slots(self) -> None:
        """Forget the micro-batch's slots. A kept output holds the hook whose closure holds its
        slot (slot -> output -> hook -> slot): cleared here, so the output and the activations
        behind it are freed when the micro-batch ends, not whenever the garbage collector runs."""
        for s in self._slots:
            s.output = None
        self._ctx = None
        self._slots = []
        self._keep_outputs = False

    def abandon_micro(self) -> None:
        """Drop a half-open micro-batch (its forward or backward raised)."""
        self._drop_slots()

    @contextmanager
    def micro(
        self, positions: torch.Tensor, rows: torch.Tensor, token_index: torch.Tensor, grad_scale: float = 1.0
    ) -> Iterator[None]:
        self.begin_micro(positions, rows, token_index, grad_scale)
        ok = False
        try:
            yield
            ok = True
        finally:
            if ok:
                self.end_micro()
            else:
                self.abandon_micro()

    def captured_outputs(self) -> list[torch.Tensor]:
        """Module outputs of the current context (with keep_outputs=True), for autograd.grad."""
        return [s.output for s in self._slots if s.output is not None]

    # ---------------------------------------------------------------- hooks
    def _positions_on(self, device: torch.device) -> torch.Tensor:
        cache = self._ctx["device_positions"]
        key = str(device)
        if key not in cache:
            cache[key] = self._ctx["positions"].to(device)
        return cache[key]

    def _tick(self, device: torch.device) -> float:
        if self.settings.profile_timing and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def _guarded(self, fn: Any) -> Any:
        """`fn` whose exceptions go to `on_error` (and end the micro-batch's capture) when it is set."""

        def run(*args: Any) -> Any:
            if self.on_error is None:
                return fn(*args)
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - handed on, raised later on every rank
                self.abandon_micro()
                self.on_error(e)
                return None

        return run

    def _make_forward_hook(self, idx: int) -> Any:
        @self._guarded
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            ctx = self._ctx
            if ctx is None or not torch.is_grad_enabled() or _in_backward():
                return
            if ctx["positions"].numel() == 0:
                return
            t0 = self._tick(output.device)
            slot = self._slots[idx]
            if slot.v is not None:
                raise RuntimeError(
                    f"module {self.names[idx]} ran twice in one micro-batch; influence capture "
                    f"supports each traced module once per forward"
                )
            x = inputs[0]
            pos = self._positions_on(x.device)
            rows_available = x.numel() // x.shape[-1]
            if int(ctx["max_position"]) >= rows_available:
                raise RuntimeError(
                    f"influence capture position {int(ctx['max_position'])} is outside the input of "
                    f"{self.names[idx]} ({rows_available} positions): the batch layout and the positions "
                    "disagree"
                )
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            proj = self._projections(idx, x.device, dtype)
            with torch.no_grad():  # nothing here may join the graph (checkpointing counts saved tensors)
                v = x.reshape(-1, x.shape[-1]).index_select(0, pos).to(dtype)
                if proj is not None:
                    v = v @ proj[0].t()
            slot.v = self._store(v)
            if self._keep_outputs:
                slot.output = output
            scale = ctx["scale"]

            @self._guarded
            def grad_hook(grad: torch.Tensor) -> None:
                if self._ctx is not ctx:
                    return  # the micro-batch was abandoned
                if slot.u is not None:
                    raise RuntimeError(f"module {self.names[idx]} received two gradients in one micro-batch")
                t1 = self._tick(grad.device)
                with torch.no_grad():
                    u = grad.reshape(-1, grad.shape[-1]).index_select(0, pos).to(dtype)
                    if proj is not None:
                        u = u @ proj[1].t()
                    if scale != 1.0:
                        u = u * scale
                slot.u = self._store(u)
                self.hook_seconds += self._tick(grad.device) - t1

            if output.requires_grad:
                output.register_hook(grad_hook)
            self.hook_seconds += self._tick(output.device) - t0

        return hook

    def _store(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if self._storage_dtype == torch.bfloat16:
            t = t.to(torch.bfloat16)
        if self.settings.grad_offload_to_cpu and t.device.type != "cpu":
            t = t.to("cpu", non_blocking=True)  # pinned host memory, filled later by the stream
            if t.device.type == "cpu" and torch.cuda.is_available():
                event = torch.cuda.Event()
                event.record()
                self._copies.append(event)
        return t

    def wait_for_copies(self) -> None:
        """Block until every non-blocking device-to-host copy has landed; before any host read."""
        for event in self._copies:
            event.synchronize()
        self._copies = []

    # ---------------------------------------------------------------- results
    def captured(self) -> CapturedFactors:
        self.wait_for_copies()
        rows = torch.cat(self._rows) if self._rows else torch.zeros(0, dtype=torch.long)
        tok = torch.cat(self._tok) if self._tok else torch.zeros(0, dtype=torch.long)
        modules = []
        for i, name in enumerate(self.names):
            k_in, k_out = self.dims[i]
            if self._u[i]:
                dev = self._u[i][0].device
                u = torch.cat([t.to(dev) for t in self._u[i]])
                v = torch.cat([t.to(dev) for t in self._v[i]])
            else:
                u = torch.zeros(0, k_out)
                v = torch.zeros(0, k_in)
            modules.append(ModuleFactors(name, k_in, k_out, u, v))
        return CapturedFactors(rows=rows, token_index=tok, modules=modules)

    def memory_bytes(self) -> int:
        """Bytes held by the captured factors now."""
        total = 0
        for lst in (*self._u, *self._v):
            total += sum(t.numel() * t.element_size() for t in lst)
        return total
