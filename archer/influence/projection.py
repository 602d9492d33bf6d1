"""Two-sided random projections of per-token gradients of an `nn.Linear`.

The gradient of a linear layer through position t is the rank-1 matrix ∂L/∂y_t · x_tᵀ. Projecting
both sides, u_t = P_out ∂L/∂y_t (k_out) and v_t = P_in x_t (k_in), gives the projected gradient
vec(u_t v_tᵀ) of size D = k_in·k_out without ever forming the d_out×d_in matrix. Entries are ±1/√k
(Rademacher) or N(0, 1/k) (Gaussian), so E[PᵀP] = I and inner products are preserved in
expectation. Each matrix is seeded from a stable hash of the module name and side: the same
module gets the same matrix on every rank, at every step, in every process.

A random projection is never exact, not even a square one: `projection_dim_factor=1` gives a
random d×d matrix, whose PᵀP is the identity only in expectation. Exact, full-dimension factors come
from `projection="identity"` (k = d, P = I).
"""

from __future__ import annotations

import hashlib
import math

import torch


def stable_seed(name: str, side: str) -> int:
    """A 63-bit seed from the module name and the side ('in' or 'out'), identical everywhere."""
    digest = hashlib.sha256(f"{name}:{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def pick_projection_dims(
    d_in: int, d_out: int, *, factor: int, max_vector_sum: int, max_hessian_dim: int
) -> tuple[int, int]:
    """(k_in, k_out): dim // factor on each side, then the larger side shrinks until
    k_in + k_out <= max_vector_sum and k_in * k_out <= max_hessian_dim (each side stays >= 1).
    A factor of 1 keeps the full dimensions when the caps allow it, but the matrix is still a random
    square one (not the identity): only `projection="identity"` is exact."""
    if factor < 1:
        raise ValueError("projection_dim_factor must be >= 1")
    k_in = max(1, min(d_in, d_in // factor if factor > 1 else d_in))
    k_out = max(1, min(d_out, d_out // factor if factor > 1 else d_out))
    if max_vector_sum > 0 and k_in + k_out > max_vector_sum:
        # shrink in proportion first, so neither side collapses when both are large
        scale = max_vector_sum / (k_in + k_out)
        k_in, k_out = max(1, int(k_in * scale)), max(1, int(k_out * scale))
    while max_hessian_dim > 0 and k_in * k_out > max_hessian_dim and (k_in > 1 or k_out > 1):
        if k_in >= k_out:
            k_in -= 1
        else:
            k_out -= 1
    while max_vector_sum > 0 and k_in + k_out > max_vector_sum and (k_in > 1 or k_out > 1):
        if k_in >= k_out:
            k_in -= 1
        else:
            k_out -= 1
    return k_in, k_out


def projection_matrix(
    name: str, side: str, k: int, d: int, *, kind: str = "rademacher", identity: bool = False
) -> torch.Tensor:
    """A [k, d] float32 matrix for one side of one module (CPU; move it where it is used).
    `kind="identity"` (or `identity=True`; requires k == d) returns the identity: the projection is
    then exact. The recorder skips the product altogether in that case."""
    if identity or kind == "identity":
        if k != d:
            raise ValueError("an identity projection needs k == d")
        return torch.eye(d, dtype=torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(stable_seed(name, side))
    if kind == "rademacher":
        signs = torch.randint(0, 2, (k, d), generator=gen, dtype=torch.int8)
        return (signs.float() * 2 - 1) / math.sqrt(k)
    if kind == "gaussian":
        return torch.randn((k, d), generator=gen, dtype=torch.float32) / math.sqrt(k)
    raise ValueError(f"unknown projection {kind!r}")
