"""Prompt groups split across data-parallel ranks: gather the small per-response data.

verl balances sequence lengths across ranks, so the n responses of one prompt often land on
different ranks. Rather than dropping those groups (as the original tracer did), every rank shares
its per-response projected gradients (R_local × D per module: small) and, for the token Hessian,
its token factors, so each rank can form the whole group's Hessian and contrast and then score its
own tokens. Row ids must be unique across ranks (the engines carry a global row id).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from archer.influence.scoring import ResponseMeta


class ProcessGroupComm:
    """All-gathers over a torch.distributed process group (gloo on CPU, NCCL on GPU)."""

    def __init__(self, group: Any = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ProcessGroupComm needs an initialised torch.distributed process group")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self._sizes: list[int] = []

    def _device(self, t: torch.Tensor) -> torch.device:
        backend = dist.get_backend(self.group)
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def gather_metas(self, metas: list[ResponseMeta]) -> tuple[list[ResponseMeta], int]:
        payload = [(m.row, m.group, bool(m.accepted), float(m.sign)) for m in metas]
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, payload, group=self.group)
        self._sizes = [len(p) for p in parts]
        merged = [ResponseMeta(row=r, group=g, accepted=a, sign=s) for part in parts for (r, g, a, s) in part]
        rows = [m.row for m in merged]
        if len(set(rows)) != len(rows):
            raise ValueError("influence: row ids repeat across ranks; the engine must pass global row ids")
        return merged, sum(self._sizes[: self.rank])

    def _all_gather_rows(self, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate a [n_rank, ...] tensor from every rank (n differs per rank)."""
        dev = self._device(t)
        width = max(sizes) if sizes else 0
        padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=dev)
        if t.shape[0]:
            padded[: t.shape[0]] = t.to(dev)
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded, group=self.group)
        return torch.cat([o[:n] for o, n in zip(out, sizes)]).to(t.device)

    def gather_rows(self, G: torch.Tensor) -> torch.Tensor:
        return self._all_gather_rows(G, self._sizes)

    def gather_tokens(self, resp: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = torch.tensor([resp.shape[0]], device=self._device(resp))
        counts = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(counts, n, group=self.group)
        sizes = [int(c.item()) for c in counts]
        return (
            self._all_gather_rows(resp, sizes),
            self._all_gather_rows(U, sizes),
            self._all_gather_rows(V, sizes),
        )
