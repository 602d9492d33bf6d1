"""Influence scores from captured factors, without ever forming per-token D-vectors.

Notation, per module m (the Hessian is block-diagonal: one D×D block per module, D = k_in·k_out):
  g_t = vec(u_t v_tᵀ)                  projected gradient of the output function through position t
  σ_r                                  the sign of the weight the output function puts on response r
                                       (its advantage for training_loss / log_prob_advantage, its reward
                                       for log_prob_reward, +1 for log_prob); σ_t is that of t's response
  g_r = Σ_{t∈r} g_t  (or the mean)     response gradient (response_grad = sum | mean)
  d   = Σ_{r∈acc} w_r σ_r g_r − Σ_{r∈rej} w_r σ_r g_r   (w = 1 for `sum`, 1/|acc| or 1/|rej| for `mean`)
  H   = Σ_r g_r g_rᵀ + λI  (hessian_source = response)   or   Σ_t g_t g_tᵀ + λI  (token)
  s   = H⁻¹ d  (inverse)  or  d  (identity);  λ = reg_lambda, or 0.1·tr(GᵀG)/D when reg_lambda <= 0
  score_t = σ_t Σ_m g_tᵀ s_m = σ_t Σ_m u_tᵀ reshape(s_m) v_t

σ_r g_r is the direction that *reinforces* response r whatever the sign of its advantage, so the
contrast counts each response once (the sign-double-counting bug of signed-reward outputs cannot
happen), and σ_t g_t is the reinforcement direction of token t. A positive score means that
reinforcing token t moves the policy toward the accepted responses of its group and away from the
rejected ones; a negative score, toward the rejected ones. One solve per direction, never one per
token. When the number of responses (or tokens) is below D, the solve uses the Woodbury identity
H⁻¹d = (d − Gᵀ(GGᵀ + λI)⁻¹Gd)/λ, an R×R system; for the token source GGᵀ is the Gram matrix
(UUᵀ)∘(VVᵀ), which needs no D-vectors either.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from archer.influence.capture import CapturedFactors, ModuleFactors
from archer.influence.groups import group_values, has_contrast
from archer.influence.settings import InfluenceSettings

# elements of one chunk of materialised outer products (only for dense token Hessians / response sums)
CHUNK_ELEMENTS = 1 << 24


@dataclass
class ResponseMeta:
    """What scoring needs to know about one response (row)."""

    row: int
    group: Hashable
    accepted: bool
    sign: float = 1.0  # σ_r: sign of the output function's weight on this response (0 drops it)


@dataclass
class ScoreResult:
    """Scores of the captured tokens (aligned with CapturedFactors.rows/token_index; NaN where
    the token's group was skipped) and per-module parts."""

    scores: torch.Tensor  # [N] float64 on CPU
    per_module: list[torch.Tensor]  # each [N]
    metrics: dict[str, float] = field(default_factory=dict)


def response_gradients(
    mod: ModuleFactors, tok_resp: torch.Tensor, R: int, *, mean: bool, dtype: torch.dtype
) -> torch.Tensor:
    """[R, D] response gradients Σ_{t∈r} u_t v_tᵀ (or the mean over captured tokens).

    `tok_resp[j]` is the response index (0..R-1) of captured token j, or -1 to leave it out."""
    D = mod.dim
    device = mod.u.device
    out = torch.zeros((R, mod.k_out, mod.k_in), dtype=dtype, device=device)
    keep = (tok_resp >= 0).nonzero().flatten()
    if R == 0 or keep.numel() == 0:
        return out.reshape(R, D)
    target = tok_resp.index_select(0, keep)
    U = mod.u.index_select(0, keep).to(dtype)
    V = mod.v.index_select(0, keep).to(dtype)
    chunk = max(1, CHUNK_ELEMENTS // max(1, D))
    for s in range(0, U.shape[0], chunk):
        outer = U[s : s + chunk, :, None] * V[s : s + chunk, None, :]
        out.index_add_(0, target[s : s + chunk], outer)
    if mean:
        counts = torch.bincount(target, minlength=R).clamp(min=1).to(dtype)
        out /= counts[:, None, None]
    return out.reshape(R, D)


def auto_lambda(trace: float, D: int, reg_lambda: float) -> float:
    if reg_lambda > 0:
        return float(reg_lambda)
    lam = 0.1 * trace / D
    return lam if lam > 0 else 1e-12


def solve_response_hessian(G: torch.Tensor, d: torch.Tensor, reg_lambda: float) -> torch.Tensor:
    """H⁻¹d for H = GᵀG + λI (G: [R, D]); Woodbury when R < D, dense Cholesky otherwise."""
    R, D = G.shape
    lam = auto_lambda(float((G * G).sum()), D, reg_lambda)
    if R < D:
        K = G @ G.t()
        K.diagonal().add_(lam)
        c = torch.linalg.solve(K, G @ d)
        return (d - G.t() @ c) / lam
    H = G.t() @ G
    H.diagonal().add_(lam)
    L = torch.linalg.cholesky(H)
    return torch.cholesky_solve(d[:, None], L)[:, 0]


def solve_token_hessian(U: torch.Tensor, V: torch.Tensor, d: torch.Tensor, reg_lambda: float) -> torch.Tensor:
    """H⁻¹d for H = Σ_t vec(u_t v_tᵀ)vec(u_t v_tᵀ)ᵀ + λI, factored: Woodbury with the Gram matrix
    (UUᵀ)∘(VVᵀ) when N < D, a chunked dense H otherwise."""
    N, ko = U.shape
    ki = V.shape[1]
    D = ko * ki
    trace = float(((U * U).sum(1) * (V * V).sum(1)).sum())
    lam = auto_lambda(trace, D, reg_lambda)
    S_d = d.reshape(ko, ki)
    if N < D:
        K = (U @ U.t()) * (V @ V.t())
        K.diagonal().add_(lam)
        Gd = ((U @ S_d) * V).sum(1)  # g_tᵀ d for every token
        c = torch.linalg.solve(K, Gd)
        Gtc = (U * c[:, None]).t() @ V  # Σ_t c_t u_t v_tᵀ
        return (d - Gtc.reshape(D)) / lam
    H = torch.zeros((D, D), dtype=U.dtype, device=U.device)
    chunk = max(1, CHUNK_ELEMENTS // max(1, D))
    for s in range(0, N, chunk):
        Gc = (U[s : s + chunk, :, None] * V[s : s + chunk, None, :]).reshape(-1, D)
        H.addmm_(Gc.t(), Gc)
    H.diagonal().add_(lam)
    L = torch.linalg.cholesky(H)
    return torch.cholesky_solve(d[:, None], L)[:, 0]


def contrast_weights(metas: Sequence[ResponseMeta], agg: str) -> list[float]:
    """w_r·(±1)·σ_r for each response of a scope unit (0 for responses that carry no weight)."""
    n_acc = sum(1 for m in metas if m.accepted)
    n_rej = len(metas) - n_acc
    out = []
    for m in metas:
        if m.accepted:
            w = 1.0 / n_acc if agg == "mean" else 1.0
        else:
            w = -(1.0 / n_rej if agg == "mean" else 1.0)
        out.append(w * (1.0 if m.sign > 0 else -1.0 if m.sign < 0 else 0.0))
    return out


def scope_units(metas: Sequence[ResponseMeta], scope: str) -> tuple[list[list[ResponseMeta]], int]:
    """Scoring units (lists of responses) and the number of groups skipped for being all
    accepted or all rejected."""
    groups = group_values([m.group for m in metas], list(metas))
    good, skipped = [], 0
    for members in groups.values():
        if has_contrast(m.accepted for m in members):
            good.append(members)
        else:
            skipped += 1
    if scope == "all_selected":
        union = [m for g in good for m in g]
        return ([union] if union else []), skipped
    return good, skipped


class LocalComm:
    """Single-process stand-in for `archer.influence.distributed.ProcessGroupComm`: response data
    of other ranks is simply absent."""

    rank = 0

    def gather_metas(self, metas: list[ResponseMeta]) -> tuple[list[ResponseMeta], int]:
        return list(metas), 0  # (global metas, offset of this rank's block)

    def gather_rows(self, G: torch.Tensor) -> torch.Tensor:
        return G

    def gather_tokens(self, resp: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return resp, U, V


def _lookup(rows: Sequence[int], values: Sequence[int], keys: torch.Tensor) -> torch.Tensor:
    """values[rows.index(k)] for each key, -1 for keys not in rows (vectorised)."""
    if len(rows) == 0 or keys.numel() == 0:
        return torch.full_like(keys, -1)
    size = max(max(rows), int(keys.max())) + 1
    table = torch.full((size,), -1, dtype=torch.long)
    table[torch.as_tensor(list(rows), dtype=torch.long)] = torch.as_tensor(list(values), dtype=torch.long)
    return table[keys.clamp(min=0).cpu()].where(keys.cpu() >= 0, torch.tensor(-1))


def _split_by(index: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Positions of each value 0..n-1 in `index` (values < 0 ignored), as a list of tensors."""
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index[index >= 0], minlength=n)
    skip = int((index < 0).sum())
    parts = torch.split(order[skip:], counts.tolist())
    return list(parts)


def score_tokens(
    captured: CapturedFactors,
    metas: Sequence[ResponseMeta],
    settings: InfluenceSettings,
    *,
    compute_device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    comm: Any = None,
    timings: dict[str, float] | None = None,
) -> ScoreResult:
    """Score every captured token against the accepted/rejected responses of its scope unit.

    Row ids in `metas` and `captured.rows` must be unique across ranks. With a multi-rank
    `comm`, response data of the other ranks is gathered so each rank scores its own tokens
    against whole groups, even when a group's responses are spread over several ranks."""
    import time

    comm = comm or LocalComm()
    N = captured.num_tokens
    if dtype is None:
        dtype = torch.float64 if any(m.u.dtype == torch.float64 for m in captured.modules) else torch.float32
    dev = (
        torch.device(compute_device)
        if compute_device is not None
        else (captured.modules[0].u.device if captured.modules else torch.device("cpu"))
    )
    metas = list(metas)
    all_metas, offset = comm.gather_metas(metas)
    units, skipped = scope_units(all_metas, settings.accepted_rejected_scope)
    row_global = {m.row: i for i, m in enumerate(all_metas)}
    unit_of_resp = torch.full((len(all_metas),), -1, dtype=torch.long)
    unit_resp_idx = []
    for ui, unit in enumerate(units):
        idx = [row_global[m.row] for m in unit]
        unit_of_resp[idx] = ui
        unit_resp_idx.append(torch.as_tensor(idx, dtype=torch.long, device=dev))
    weights = [
        torch.as_tensor(contrast_weights(u, settings.contrastive_agg), dtype=dtype, device=dev) for u in units
    ]

    # local response index (0..R_local-1) of each captured token, then its unit
    tok_local = _lookup([m.row for m in metas], list(range(len(metas))), captured.rows.long())
    tok_global = torch.where(tok_local >= 0, tok_local + offset, tok_local)
    tok_unit = torch.where(tok_global >= 0, unit_of_resp[tok_global.clamp(min=0)], tok_global)
    sigma_local = torch.as_tensor([float((m.sign > 0) - (m.sign < 0)) for m in metas] or [0.0], dtype=dtype)
    tok_sigma = torch.where(
        tok_local >= 0, sigma_local[tok_local.clamp(min=0)], torch.zeros((), dtype=dtype)
    ).to(dev)
    my_tokens_per_unit = [t.to(dev) for t in _split_by(tok_unit, len(units))]
    tok_local_dev = tok_local.to(dev)

    per_module_scores: list[torch.Tensor] = []
    t_solve = t_score = 0.0
    for mod in captured.modules:
        t0 = time.perf_counter()
        m = ModuleFactors(mod.name, mod.k_in, mod.k_out, mod.u.to(dev, dtype), mod.v.to(dev, dtype))
        G_local = response_gradients(
            m, tok_local_dev, len(metas), mean=settings.response_grad == "mean", dtype=dtype
        )
        G_all = comm.gather_rows(G_local)
        token_data = None
        if settings.hessian_mode == "inverse" and settings.hessian_source == "token":
            resp_all, U_all, V_all = comm.gather_tokens(tok_global.to(dev), m.u, m.v)
            unit_of_tok_all = torch.where(
                resp_all >= 0, unit_of_resp.to(dev)[resp_all.clamp(min=0)], resp_all
            )
            token_data = (_split_by(unit_of_tok_all.cpu(), len(units)), U_all, V_all)
        mod_scores = torch.full((N,), float("nan"), dtype=dtype, device=dev)
        t_solve += time.perf_counter() - t0
        for ui in range(len(units)):
            t0 = time.perf_counter()
            G = G_all.index_select(0, unit_resp_idx[ui])
            d = (weights[ui][:, None] * G).sum(0)
            if settings.hessian_mode == "identity":
                s = d
            elif settings.hessian_source == "response":
                s = solve_response_hessian(G, d, settings.reg_lambda)
            else:
                parts, U_all, V_all = token_data
                sel = parts[ui].to(dev)
                s = solve_token_hessian(
                    U_all.index_select(0, sel), V_all.index_select(0, sel), d, settings.reg_lambda
                )
            t1 = time.perf_counter()
            j = my_tokens_per_unit[ui]
            if j.numel():
                S = s.reshape(mod.k_out, mod.k_in)
                raw = ((m.u.index_select(0, j) @ S) * m.v.index_select(0, j)).sum(1)
                mod_scores[j] = raw * tok_sigma.index_select(0, j)
            t_solve += t1 - t0
            t_score += time.perf_counter() - t1
        per_module_scores.append(mod_scores.cpu())
    if per_module_scores:
        total = torch.stack(per_module_scores).sum(0)
    else:
        total = torch.full((N,), float("nan"), dtype=torch.float64)
    if timings is not None:
        timings["solve"] = timings.get("solve", 0.0) + t_solve
        timings["score"] = timings.get("score", 0.0) + t_score
    metrics = {
        "groups_selected": float(len({mm.group for mm in all_metas})),
        "groups_skipped_all_same": float(skipped),
        "scored_units": float(len(units)),
        "tokens_scored": float(int((~torch.isnan(total)).sum())) if N else 0.0,
    }
    return ScoreResult(scores=total, per_module=per_module_scores, metrics=metrics)


def scatter_to_rows(
    result_scores: torch.Tensor, captured: CapturedFactors, lengths: dict[int, int]
) -> dict[int, torch.Tensor]:
    """Per-row arrays of length `lengths[row]` (the scores' dtype): the token scores, NaN where
    not captured."""
    dtype = result_scores.dtype
    out = {r: torch.full((L,), float("nan"), dtype=dtype) for r, L in lengths.items()}
    if not lengths or captured.num_tokens == 0:
        return out
    rows = captured.rows.long()
    toks = captured.token_index.long()
    for r, arr in out.items():
        sel = (rows == r).nonzero().flatten()
        if sel.numel():
            t = toks.index_select(0, sel)
            ok = (t >= 0) & (t < arr.shape[0])
            arr[t[ok]] = result_scores.index_select(0, sel)[ok]
    return out
