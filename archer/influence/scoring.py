"""Influence scores from captured factors, without ever forming per-token D-vectors.

Notation, per module m (the Hessian is block-diagonal: one D×D block per module, D = k_in·k_out):
  g_t = vec(u_t v_tᵀ)                  projected gradient of the output function through position t
  σ_r                                  the sign of the weight the output function puts on response r
                                       (its advantage for training_loss / log_prob_advantage, its reward
                                       for log_prob_reward, +1 for log_prob); σ_t is that of t's response
  g_r = Σ_{t∈r} g_t  (or the mean)     response gradient (response_grad = sum | mean)
  d   = Σ_{r∈acc} w_r σ_r g_r − Σ_{r∈rej} w_r σ_r g_r   (w = 1 for `sum`, 1/|acc| or 1/|rej| for `mean`)
  H   = Σ_r g_r g_rᵀ + λI  (hessian_source = response)   or   Σ_t g_t g_tᵀ + λI  (token)
  s   = H⁻¹ d  (inverse)  or  d  (identity);  λ = reg_lambda, or 0.1·tr(GᵀG)/D (damping=dimension)
                                       or 0.1·tr(GᵀG)/min(rows, D) (damping=rank) when reg_lambda <= 0
  score_t = σ_t Σ_m g_tᵀ s_m = σ_t Σ_m u_tᵀ reshape(s_m) v_t

σ_r g_r is the direction that *reinforces* response r whatever the sign of its advantage, so the
contrast counts each response once (the sign-double-counting bug of signed-reward outputs cannot
happen), and σ_t g_t is the reinforcement direction of token t. A positive score means that
reinforcing token t moves the policy toward the accepted responses of its group and away from the
rejected ones; a negative score, toward the rejected ones. One solve per direction, never one per
token. When the number of responses (or tokens) is below D, the solve uses the Woodbury identity
H⁻¹d = (d − Gᵀ(GGᵀ + λI)⁻¹Gd)/λ, an R×R system; for the token source GGᵀ is the Gram matrix
(UUᵀ)∘(VVᵀ), which needs no D-vectors either. Inside the scorer d = Gᵀc always lies in the span of
the rows, so the push-through form H⁻¹Gᵀc = Gᵀ(GGᵀ + λI)⁻¹c is used instead: the same value without
the cancellation of d − Gᵀ(…), which matters at full dimension (λ ≪ ‖g‖²). The small systems are
solved in float64.

Leave-one-out contrast (`contrast = leave_one_out`): the tokens of response r are scored against
d₋ᵣ, the contrast the unit would have without r (its weights recomputed without r, so `mean` divides
by the remaining counts), preconditioned in inverse mode by H₋ᵣ = H − g_r g_rᵀ (response source) or
H − Σ_{t∈r} g_t g_tᵀ (token source), with the unit's λ. No per-response re-solve: with
Q = (GGᵀ + λI)⁻¹, H₋ᵣ⁻¹d₋ᵣ = Gᵀβ_r, where β_r = Q c₋ᵣ − Q[:, r] Q_rr⁻¹ (Q c₋ᵣ)_r (the inverse of
a kernel matrix with r's rows and columns deleted, from Q alone; a block of n_r tokens for the token
source). A dense token Hessian (more tokens than D) is downdated with Woodbury instead.
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
    """[R, D] response gradients Σ_{t∈r} u_t v_tᵀ = U_rᵀV_r (or the mean over captured tokens).

    `tok_resp[j]` is the response index (0..R-1) of captured token j, or -1 to leave it out. One
    [k_out, n_r]·[n_r, k_in] product per response: no per-token outer product is formed."""
    D = mod.dim
    out = torch.zeros((R, mod.k_out, mod.k_in), dtype=dtype, device=mod.u.device)
    if R == 0 or not bool((tok_resp >= 0).any()):
        return out.reshape(R, D)
    tok_resp = tok_resp.to(mod.u.device)
    for r, idx in enumerate(_split_by(tok_resp, R)):
        if idx.numel():
            U = mod.u.index_select(0, idx).to(dtype)
            V = mod.v.index_select(0, idx).to(dtype)
            out[r] = U.t() @ V
            if mean:
                out[r] /= idx.numel()
    return out.reshape(R, D)


DAMPINGS = ("dimension", "rank")


def auto_lambda(trace: float, D: int, reg_lambda: float, rows: int = 0, damping: str = "dimension") -> float:
    """The damping λ: `reg_lambda` when > 0, else 0.1 × the mean eigenvalue of H₀ = GᵀG over
    `dimension` (tr/D, which shrinks with D: a projected and an exact H get very different
    relative damping) or over its `rank` bound (tr/min(rows, D): the mean nonzero eigenvalue of
    the R×R kernel, the same relative damping whatever D is)."""
    if reg_lambda > 0:
        return float(reg_lambda)
    if damping not in DAMPINGS:
        raise ValueError(f"damping must be one of {', '.join(DAMPINGS)}; got {damping!r}")
    denom = min(rows, D) if damping == "rank" and rows > 0 else D
    lam = 0.1 * trace / denom
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


def loo_contrast_weights(metas: Sequence[ResponseMeta], agg: str) -> list[list[float]]:
    """Row r: the contrast weights of the unit without response r (0 at r). With `mean` the
    remaining responses of r's side are averaged over their own count; if r was the only response
    of its side, that side contributes nothing."""
    rows = []
    for r in range(len(metas)):
        w = contrast_weights([m for i, m in enumerate(metas) if i != r], agg)
        rows.append(w[:r] + [0.0] + w[r:])
    return rows


def gram64(A: torch.Tensor) -> torch.Tensor:
    """A·Aᵀ in float64, accumulated over column chunks (A may be a wide [n, D] matrix)."""
    n, D = A.shape
    K = torch.zeros((n, n), dtype=torch.float64, device=A.device)
    step = max(1, CHUNK_ELEMENTS // max(1, n))
    for s in range(0, D, step):
        a = A[:, s : s + step].double()
        K += a @ a.t()
    return K


def token_gram64(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """[N, N] inner products of the token gradients g_t = vec(u_t v_tᵀ): (UUᵀ)∘(VVᵀ), float64."""
    return gram64(U) * gram64(V)


def kernel_directions(
    K0: torch.Tensor, coef: torch.Tensor, lam: float, blocks: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """Coefficients β (float64) such that Bᵀβ[:, r] = H⁻¹Bᵀcoef[:, r] for H = BᵀB + λI, where K0 =
    BBᵀ is the kernel of the basis rows B (response or token gradients) and coef is [n, m].

    With `blocks` (one index tensor per column r: the basis rows of response r), column r is
    instead solved with those rows deleted from the basis and from H (leave-one-out): from
    Q = (K0 + λI)⁻¹, (K₋ᵣ)⁻¹ = Q₋ᵣ₋ᵣ − Q₋ᵣᵣ Q_rr⁻¹ Qᵣ₋ᵣ, so β_r = Qc − Q[:, r] Q_rr⁻¹ (Qc)_r. coef must
    be zero on those rows (a leave-one-out contrast)."""
    K = K0.clone()
    K.diagonal().add_(lam)
    if blocks is None:
        return torch.linalg.solve(K, coef.double())
    L = torch.linalg.cholesky(K)
    Q = torch.cholesky_inverse(L)
    QA = Q @ coef.double()
    beta = QA.clone()
    for r, idx in enumerate(blocks):
        if idx.numel() == 0:
            continue
        corr = torch.linalg.solve(Q.index_select(0, idx).index_select(1, idx), QA.index_select(0, idx)[:, r])
        beta[:, r] -= Q.index_select(1, idx) @ corr
        beta[idx, r] = 0.0  # exactly: the deleted rows carry no weight
    return beta


def dense_token_loo_directions(
    U: torch.Tensor,
    V: torch.Tensor,
    blocks: Sequence[torch.Tensor],
    G: torch.Tensor,
    C: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """[R, D] leave-one-out directions H₋ᵣ⁻¹Gᵀc₋ᵣ for a dense token Hessian (more tokens than D):
    one Cholesky of H = Σ_t g_t g_tᵀ + λI, then per response the Woodbury downdate
    H₋ᵣ⁻¹ = H⁻¹ + H⁻¹T_rᵀ(I − T_r H⁻¹T_rᵀ)⁻¹T_r H⁻¹ (T_r: r's token gradients). Float64."""
    N, ko = U.shape
    ki = V.shape[1]
    D = ko * ki
    U64, V64 = U.double(), V.double()
    H = torch.zeros((D, D), dtype=torch.float64, device=U.device)
    chunk = max(1, CHUNK_ELEMENTS // max(1, D))
    for s in range(0, N, chunk):
        Gc = (U64[s : s + chunk, :, None] * V64[s : s + chunk, None, :]).reshape(-1, D)
        H.addmm_(Gc.t(), Gc)
    H.diagonal().add_(lam)
    L = torch.linalg.cholesky(H)
    X = torch.cholesky_solve(G.double().t(), L) @ C.double().t()  # column r: H⁻¹d₋ᵣ
    out = torch.empty((len(blocks), D), dtype=torch.float64, device=U.device)
    for r, idx in enumerate(blocks):
        x = X[:, r]
        if idx.numel() == 0:
            out[r] = x
            continue
        Tr = (U64.index_select(0, idx)[:, :, None] * V64.index_select(0, idx)[:, None, :]).reshape(-1, D)
        Y = torch.cholesky_solve(Tr.t(), L)  # H⁻¹T_rᵀ
        M = torch.eye(idx.numel(), dtype=torch.float64, device=U.device) - Tr @ Y
        out[r] = x + Y @ torch.linalg.solve(M, Tr @ x)
    return out


def bilinear_scores(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """u_tᵀ S v_t for every row t (chunked over rows, so U·S never exceeds a chunk)."""
    n = U.shape[0]
    out = torch.empty(n, dtype=U.dtype, device=U.device)
    step = max(1, CHUNK_ELEMENTS // max(1, S.shape[1]))
    for s in range(0, n, step):
        out[s : s + step] = ((U[s : s + step] @ S) * V[s : s + step]).sum(1)
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
    loo = settings.contrast == "leave_one_out"
    inverse = settings.hessian_mode == "inverse"
    token_source = inverse and settings.hessian_source == "token"
    mean_grad = settings.response_grad == "mean"
    metas = list(metas)
    all_metas, offset = comm.gather_metas(metas)
    units, skipped = scope_units(all_metas, settings.accepted_rejected_scope)
    row_global = {m.row: i for i, m in enumerate(all_metas)}
    unit_of_resp = torch.full((len(all_metas),), -1, dtype=torch.long)
    pos_in_unit = torch.full((len(all_metas),), -1, dtype=torch.long)  # index of a response in its unit
    unit_resp_idx = []
    for ui, unit in enumerate(units):
        idx = [row_global[m.row] for m in unit]
        unit_of_resp[idx] = ui
        pos_in_unit[idx] = torch.arange(len(idx))
        unit_resp_idx.append(torch.as_tensor(idx, dtype=torch.long, device=dev))
    # coefficients of the contrast in the unit's response gradients: [R_u] (include) or, for
    # leave-one-out, [R_u, R_u] with row r the contrast scored against by r's tokens
    if loo:
        coefs = [
            torch.as_tensor(
                loo_contrast_weights(u, settings.contrastive_agg), dtype=torch.float64, device=dev
            )
            for u in units
        ]
    else:
        coefs = [
            torch.as_tensor(contrast_weights(u, settings.contrastive_agg), dtype=torch.float64, device=dev)
            for u in units
        ]
    unit_of_resp_dev, pos_in_unit_dev = unit_of_resp.to(dev), pos_in_unit.to(dev)

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
    tok_global_dev = tok_global.to(dev)

    per_module_scores: list[torch.Tensor] = []
    t_solve = t_score = 0.0
    for mod in captured.modules:
        t0 = time.perf_counter()
        m = ModuleFactors(mod.name, mod.k_in, mod.k_out, mod.u.to(dev, dtype), mod.v.to(dev, dtype))
        G_local = response_gradients(m, tok_local_dev, len(metas), mean=mean_grad, dtype=dtype)
        G_all = comm.gather_rows(G_local)
        token_data = None
        if token_source:
            resp_all, U_all, V_all = comm.gather_tokens(tok_global_dev, m.u, m.v)
            unit_of_tok_all = torch.where(resp_all >= 0, unit_of_resp_dev[resp_all.clamp(min=0)], resp_all)
            # weight of each token in its response gradient: 1 (sum) or 1/captured count (mean)
            counts = torch.bincount(resp_all[resp_all >= 0], minlength=len(all_metas)).clamp(min=1)
            tok_weight = (1.0 / counts.double())[resp_all.clamp(min=0)] if mean_grad else None
            token_data = (_split_by(unit_of_tok_all.cpu(), len(units)), resp_all, U_all, V_all, tok_weight)
        mod_scores = torch.full((N,), float("nan"), dtype=dtype, device=dev)
        t_solve += time.perf_counter() - t0
        for ui in range(len(units)):
            t0 = time.perf_counter()
            G = G_all.index_select(0, unit_resp_idx[ui])
            c = coefs[ui]
            if token_data is not None:
                parts, resp_all, U_all, V_all, tok_weight = token_data
                sel = parts[ui].to(dev)
                tok_pos = pos_in_unit_dev[resp_all.index_select(0, sel)]  # response of each unit token
                S = _token_source_directions(
                    U_all.index_select(0, sel),
                    V_all.index_select(0, sel),
                    tok_pos,
                    None if tok_weight is None else tok_weight.index_select(0, sel),
                    G,
                    c,
                    settings.reg_lambda,
                    loo=loo,
                    damping=settings.damping,
                )
            else:
                S = _response_source_directions(
                    G, c, settings.reg_lambda, inverse=inverse, loo=loo, damping=settings.damping
                )
            S = S.to(dtype).reshape(-1, mod.k_out, mod.k_in)
            t1 = time.perf_counter()
            j = my_tokens_per_unit[ui]
            if j.numel():
                Uj, Vj = m.u.index_select(0, j), m.v.index_select(0, j)
                if loo:  # each token against the direction of its own response
                    which = pos_in_unit_dev[tok_global_dev.index_select(0, j)]
                    raw = torch.empty(j.numel(), dtype=dtype, device=dev)
                    for r, idx in enumerate(_split_by(which, S.shape[0])):
                        if idx.numel():
                            raw[idx] = bilinear_scores(Uj.index_select(0, idx), S[r], Vj.index_select(0, idx))
                else:
                    raw = bilinear_scores(Uj, S[0], Vj)
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


def _response_source_directions(
    G: torch.Tensor,
    c: torch.Tensor,
    reg_lambda: float,
    *,
    inverse: bool,
    loo: bool,
    damping: str = "dimension",
) -> torch.Tensor:
    """Scoring directions of one unit from its response gradients G [R, D]: [1, D] (c: [R]) or,
    leave-one-out, [R, D] (c: [R, R], row r for response r)."""
    R, D = G.shape
    if not inverse:  # s = d = Gᵀc
        return (c.to(G.dtype) @ G)[None] if not loo else c.to(G.dtype) @ G
    lam = auto_lambda(float((G * G).sum()), D, reg_lambda, rows=R, damping=damping)
    if loo:
        blocks = [torch.tensor([r], device=G.device) for r in range(R)]
        beta = kernel_directions(gram64(G), c.t(), lam, blocks)  # column r for response r
        return beta.t().to(G.dtype) @ G
    if R < D:  # push-through Woodbury: H⁻¹Gᵀc = Gᵀ(GGᵀ + λI)⁻¹c
        return (kernel_directions(gram64(G), c[:, None], lam)[:, 0].to(G.dtype) @ G)[None]
    d = c.to(G.dtype) @ G
    return solve_response_hessian(G, d, lam)[None]


def _token_source_directions(
    U: torch.Tensor,
    V: torch.Tensor,
    tok_pos: torch.Tensor,
    tok_weight: torch.Tensor | None,
    G: torch.Tensor,
    c: torch.Tensor,
    reg_lambda: float,
    *,
    loo: bool,
    damping: str = "dimension",
) -> torch.Tensor:
    """As `_response_source_directions` for H = Σ_t g_t g_tᵀ + λI over the unit's tokens (U, V;
    tok_pos: the response of each within the unit; tok_weight: 1/count with response_grad=mean)."""
    N, ko = U.shape
    ki = V.shape[1]
    D = ko * ki
    R = G.shape[0]
    lam = auto_lambda(float(((U * U).sum(1) * (V * V).sum(1)).sum()), D, reg_lambda, rows=N, damping=damping)
    blocks = _split_by(tok_pos, R)
    if N >= D:  # dense Hessian
        if loo:
            return dense_token_loo_directions(U, V, blocks, G, c, lam)
        d = c.to(G.dtype) @ G
        return solve_token_hessian(U, V, d, lam)[None]
    # kernel form: d = Tᵀa with a_t = c_{r(t)}·(1 or 1/n_r), so H⁻¹d = Tᵀ(TTᵀ + λI)⁻¹a
    K0 = token_gram64(U, V)
    per_token = (c.t() if loo else c[:, None]).index_select(0, tok_pos)  # [N, m]
    if tok_weight is not None:
        per_token = per_token * tok_weight[:, None]
    beta = kernel_directions(K0, per_token, lam, blocks if loo else None)
    out = torch.empty((beta.shape[1], D), dtype=U.dtype, device=U.device)
    for r in range(beta.shape[1]):
        out[r] = (U.t() @ (V * beta[:, r].to(U.dtype)[:, None])).reshape(D)
    return out


def estimate_memory_bytes(
    dims: Sequence[tuple[int, int]],
    units: Sequence[tuple[int, int]],
    n_responses: int,
    n_tokens: int,
    settings: InfluenceSettings,
    *,
    compute_bytes: int = 4,
) -> dict[str, int]:
    """An estimate of a step's influence memory: `factors`, the captured factors of every module
    (held until scoring), and `scoring`, the peak of scoring the largest module (modules are scored
    one at a time). `dims`: (k_in, k_out) per module; `units`: (responses, tokens) per scoring unit;
    `compute_bytes`: 4, or 8 for a float64 model. Not a bound: allocator overheads come on top."""
    cb = compute_bytes
    sb = 2 if settings.storage_dtype == "bf16" else cb
    loo = settings.contrast == "leave_one_out"
    inverse = settings.hessian_mode == "inverse"
    factors = n_tokens * sum(ki + ko for ki, ko in dims) * sb
    scoring = 0
    for ki, ko in dims:
        D = ki * ko
        base = n_tokens * (ki + ko) * cb + 2 * n_responses * D * cb + CHUNK_ELEMENTS * cb
        unit_peak = 0
        for R_u, N_u in units:
            need = R_u * D * cb + (R_u if loo else 1) * D * (cb + 8)
            if inverse and settings.hessian_source == "response":
                need += 3 * R_u * R_u * 8 + CHUNK_ELEMENTS * 8 if (loo or R_u < D) else 2 * D * D * 8
            elif inverse:
                need += 2 * N_u * (ki + ko) * cb
                if N_u < D:
                    need += 4 * N_u * N_u * 8 + (2 * N_u * R_u * 8 if loo else 0)
                else:
                    need += 2 * D * D * 8 + (4 * D * R_u * 8 if loo else 0)
            unit_peak = max(unit_peak, need)
        scoring = max(scoring, base + unit_peak)
    return {"factors": int(factors), "scoring": int(scoring)}


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
