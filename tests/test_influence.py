"""The influence tracer, exactly: hooks against autograd, scores against brute force (float64)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from influence_fixtures import (
    capture_positions,
    make_batch,
    packed_inputs,
    padded_logprob_terms,
    settings,
    tiny_model,
)

from archer.influence.capture import InfluenceRecorder, clean_module_name, select_modules
from archer.influence.projection import pick_projection_dims, projection_matrix, stable_seed
from archer.influence.scoring import solve_response_hessian, solve_token_hessian
from archer.influence.selection import accepted_mask, select_groups
from archer.influence.settings import InfluenceSettings
from archer.influence.tracer import InfluenceTracer, token_subsample


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    return float(np.corrcoef(ra, rb)[0, 1])


# ----------------------------------------------------------------------------- helpers
def run_logprob_capture(model, batch, tracer, *, rows=None, micro=None, normalise=False, weights=None):
    """Capture O = Σ w_r Σ_t logp (optionally token-mean normalised over all rows, with the
    normaliser passed as grad_scale), micro-batch by micro-batch, with real backward passes."""
    rows = rows if rows is not None else batch.rows
    micro = micro or len(rows)
    total_tokens = sum(len(batch.responses[r]) for r in rows)
    from influence_fixtures import pad_rows

    for s in range(0, len(rows), micro):
        part = rows[s : s + micro]
        pb = pad_rows(batch, part)
        pos, rid, tok = capture_positions(batch, part, pb)
        with tracer.micro(pos, rid, tok, grad_scale=float(total_tokens) if normalise else 1.0):
            out = model(
                input_ids=pb.input_ids, attention_mask=pb.attention_mask, position_ids=pb.position_ids
            )
            logits = out.logits[:, pb.prompt_width - 1 : pb.prompt_width - 1 + pb.response_width]
            labels = pb.input_ids[:, pb.prompt_width : pb.prompt_width + pb.response_width]
            lp = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
            mask = torch.zeros_like(lp)
            w = torch.ones(len(part), dtype=lp.dtype)
            for i, r in enumerate(part):
                mask[i, : len(batch.responses[r])] = 1
                if weights is not None:
                    w[i] = weights[r]
            obj = (lp * mask * w[:, None]).sum()
            if normalise:
                obj = obj / total_tokens
            obj.backward()


def brute_force(model, batch, s, metas, *, token_sigma=True):
    """Explicit per-position gradients of every traced module (full D), explicit H, explicit solve."""
    from influence_fixtures import pad_rows

    names_mods = select_modules(model, s.module_name_filter, s.max_modules)
    rows = batch.rows
    pb = pad_rows(batch, rows)
    inputs, outputs = {}, {}
    handles = []
    for name, mod in names_mods:

        def fwd(m, i, o, name=name):
            inputs[name] = i[0]
            o.retain_grad()
            outputs[name] = o

        handles.append(mod.register_forward_hook(fwd))
    out = model(input_ids=pb.input_ids, attention_mask=pb.attention_mask, position_ids=pb.position_ids)
    logits = out.logits[:, pb.prompt_width - 1 : pb.prompt_width - 1 + pb.response_width]
    labels = pb.input_ids[:, pb.prompt_width : pb.prompt_width + pb.response_width]
    lp = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    mask = torch.zeros_like(lp)
    for i, r in enumerate(rows):
        mask[i, : len(batch.responses[r])] = 1
    (lp * mask).sum().backward()
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    # token list: (row, t, flat position)
    toks = [
        (r, t, r * pb.input_ids.shape[1] + pb.prompt_width - 1 + t)
        for r in rows
        for t in range(len(batch.responses[r]))
    ]
    by_row = {m.row: m for m in metas}
    per_module = []
    for name, _ in names_mods:
        X = inputs[name].reshape(-1, inputs[name].shape[-1]).detach()
        Y = outputs[name].grad.reshape(-1, outputs[name].shape[-1]).detach()
        at = torch.tensor([p for _, _, p in toks])
        g = (Y[at][:, :, None] * X[at][:, None, :]).reshape(len(toks), -1)  # [N, D]: outer(Y_p, X_p)
        D = g.shape[1]
        scores = torch.full((len(toks),), float("nan"), dtype=torch.float64)
        groups = {}
        for m in metas:
            groups.setdefault(m.group, []).append(m)
        units = [u for u in groups.values() if 0 < sum(x.accepted for x in u) < len(u)]
        if s.accepted_rejected_scope == "all_selected":
            units = [[x for u in units for x in u]]
        for unit in units:
            unit_rows = [x.row for x in unit]
            tok_idx = {r: [j for j, (rr, _, _) in enumerate(toks) if rr == r] for r in unit_rows}
            G = torch.stack(
                [
                    g[tok_idx[r]].sum(0) if s.response_grad == "sum" else g[tok_idx[r]].mean(0)
                    for r in unit_rows
                ]
            )

            grads = {r: G[i] for i, r in enumerate(unit_rows)}
            H_full = _bf_hessian(s, unit_rows, grads, tok_idx, g)
            n_rows = (
                len(unit_rows) if s.hessian_source == "response" else sum(len(v) for v in tok_idx.values())
            )
            denom = min(n_rows, D) if s.damping == "rank" else D
            lam = s.reg_lambda if s.reg_lambda > 0 else 0.1 * torch.trace(H_full).item() / denom
            eye = torch.eye(D, dtype=torch.float64)
            shared = None  # the include contrast: one d and one H for the whole unit, solved once
            for r in unit_rows:
                if s.contrast == "leave_one_out":  # the unit without r: its contrast and its Hessian
                    others = [x for x in unit if x.row != r]
                    d = _bf_contrast(s, others, grads)
                    H = _bf_hessian(s, [x.row for x in others], grads, tok_idx, g)
                    sol = d if s.hessian_mode == "identity" else torch.linalg.solve(H + lam * eye, d)
                else:
                    if shared is None:
                        d = _bf_contrast(s, unit, grads)
                        shared = (
                            d if s.hessian_mode == "identity" else torch.linalg.solve(H_full + lam * eye, d)
                        )
                    sol = shared
                at_r = tok_idx[r]
                scores[at_r] = (g[at_r] @ sol) * (by_row[r].sign if token_sigma else 1.0)
        per_module.append(scores)
    total = torch.stack(per_module).sum(0)
    return {(r, t): total[j].item() for j, (r, t, _) in enumerate(toks)}


def _bf_contrast(s, members, grads):
    """d over `members` (metas of one unit), the weights counted among the members only."""
    n_acc = sum(x.accepted for x in members)
    n_rej = len(members) - n_acc
    d = torch.zeros_like(next(iter(grads.values())))
    for x in members:
        mean = s.contrastive_agg == "mean"
        base = (1.0 / n_acc if mean else 1.0) if x.accepted else -(1.0 / n_rej if mean else 1.0)
        d += base * x.sign * grads[x.row]
    return d


def _bf_hessian(s, rows_in, grads, tok_idx, g):
    """Σ g_r g_rᵀ over the rows (response source) or Σ g_t g_tᵀ over their tokens (token source)."""
    if s.hessian_source == "response":
        Gs = torch.stack([grads[r] for r in rows_in])
        return Gs.t() @ Gs
    toks_in = [j for r in rows_in for j in tok_idx[r]]
    return g[toks_in].t() @ g[toks_in]


def tracer_scores(model, batch, s, metas, **kw):
    """Scores of the tracer at full dimension (`projection=identity`, the exact mode)."""
    tracer = InfluenceTracer(model, dataclasses.replace(s, projection="identity"))
    tracer.begin_step(metas, batch.lengths())
    run_logprob_capture(model, batch, tracer, **kw)
    per_row, metrics = tracer.finish_step()
    tracer.close()
    model.zero_grad(set_to_none=True)
    return per_row, metrics


# ----------------------------------------------------------------------------- projection
def test_projection_dims_respect_both_caps():
    for d_in, d_out, f, vs, hd in [
        (1536, 8960, 32, 128, 2500),
        (1536, 256, 32, 64, 1000),
        (64, 64, 1, 0, 0),
        (100, 300, 4, 50, 300),
    ]:
        k_in, k_out = pick_projection_dims(d_in, d_out, factor=f, max_vector_sum=vs, max_hessian_dim=hd)
        assert 1 <= k_in <= d_in and 1 <= k_out <= d_out
        if vs:
            assert k_in + k_out <= vs
        if hd:
            assert k_in * k_out <= hd
    assert pick_projection_dims(64, 64, factor=1, max_vector_sum=0, max_hessian_dim=0) == (64, 64)


def test_projection_is_seeded_by_name_and_scaled():
    a = projection_matrix("model.layers.0.mlp.down_proj", "in", 64, 256)
    b = projection_matrix("model.layers.0.mlp.down_proj", "in", 64, 256)
    c = projection_matrix("model.layers.1.mlp.down_proj", "in", 64, 256)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(torch.unique(a * 8).tolist()) == {-1.0, 1.0}  # ±1/sqrt(64)
    assert stable_seed("x", "in") == stable_seed("x", "in") != stable_seed("x", "out")
    g = projection_matrix("m", "out", 32, 128, kind="gaussian")
    assert abs(g.var().item() - 1 / 32) < 0.2 / 32


def test_projection_preserves_inner_products_in_expectation():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, generator=gen), torch.randn(256, generator=gen)
    x, y = x / x.norm(), y / y.norm() + x * 0.8
    ratios = []
    for i in range(300):
        P = projection_matrix(f"mod{i}", "in", 64, 256)
        ratios.append(((P @ x) @ (P @ y)).item() / (x @ y).item())
    assert abs(np.mean(ratios) - 1) < 0.05


def test_fsdp_wrapper_names_are_stripped_and_max_modules_keeps_last():
    assert (
        clean_module_name("_fsdp_wrapped_module.model.layers.0._fsdp_wrapped_module.mlp.down_proj")
        == "model.layers.0.mlp.down_proj"
    )
    assert (
        clean_module_name("model.layers.1._checkpoint_wrapped_module.mlp.up_proj")
        == "model.layers.1.mlp.up_proj"
    )
    model = tiny_model(layers=3)
    names = [n for n, _ in select_modules(model, r"mlp\.down_proj$", 2)]
    assert names == ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]


def test_token_subsample_is_even_and_keeps_ends():
    assert token_subsample(5, 0).tolist() == [0, 1, 2, 3, 4]
    idx = token_subsample(100, 5).tolist()
    assert idx[0] == 0 and idx[-1] == 99 and len(idx) == 5


# ----------------------------------------------------------------------------- capture
def test_factors_equal_exact_output_grads_and_inputs():
    model, batch = tiny_model(), make_batch()
    s = settings()
    rec = InfluenceRecorder(model, s, identity_projection=True)
    from influence_fixtures import pad_rows

    rows = batch.rows
    pb = pad_rows(batch, rows)
    pos, rid, tok = capture_positions(batch, rows, pb)
    inputs, outputs = {}, {}

    def keep(m, i, o, name):
        inputs[name] = i[0]
        o.retain_grad()
        outputs[name] = o

    for name, mod in select_modules(model, s.module_name_filter, 0):
        mod.register_forward_hook(lambda m, i, o, name=name: keep(m, i, o, name))
    rec.begin_micro(pos, rid, tok)
    logp, mask, _ = padded_logprob_terms(model, batch, rows)
    (logp * mask).sum().backward()
    rec.end_micro()
    cap = rec.captured()
    for m in cap.modules:
        x = inputs[m.name].reshape(-1, inputs[m.name].shape[-1])[pos]
        dy = outputs[m.name].grad.reshape(-1, outputs[m.name].shape[-1])[pos]
        assert torch.allclose(m.v, x, atol=1e-10, rtol=0)
        assert torch.allclose(m.u, dy, atol=1e-10, rtol=0)
    assert cap.rows.tolist() == rid.tolist() and cap.token_index.tolist() == tok.tolist()


def test_sum_of_token_factors_equals_weight_grad():
    model, batch = tiny_model(), make_batch()
    rec = InfluenceRecorder(model, settings(), identity_projection=True)
    from influence_fixtures import pad_rows

    pb = pad_rows(batch, batch.rows)
    n = pb.input_ids.numel()
    everything = torch.arange(n)
    rec.begin_micro(everything, everything, everything)
    logp, mask, _ = padded_logprob_terms(model, batch, batch.rows)
    (logp * mask).sum().backward()
    rec.end_micro()
    cap = rec.captured()
    mods = dict(select_modules(model, settings().module_name_filter, 0))
    for m in cap.modules:
        total = m.u.t() @ m.v  # Σ_t u_t v_tᵀ
        assert torch.allclose(total, mods[m.name].weight.grad, atol=1e-8, rtol=0)


def test_padded_and_packed_layouts_capture_identical_factors():
    model, batch = tiny_model(), make_batch()
    rows = batch.rows
    s = settings()
    rec = InfluenceRecorder(model, s, identity_projection=True)
    from influence_fixtures import pad_rows

    pb = pad_rows(batch, rows)
    pos, rid, tok = capture_positions(batch, rows, pb)
    rec.begin_micro(pos, rid, tok)
    logp, mask, _ = padded_logprob_terms(model, batch, rows)
    (logp * mask).sum().backward()
    rec.end_micro()
    padded = rec.captured()
    rec.reset()
    model.zero_grad(set_to_none=True)
    ids, ppos, attn, cu, (kpos, krid, ktok) = packed_inputs(batch, rows)
    rec.begin_micro(kpos, krid, ktok)
    logits = model(input_ids=ids, position_ids=ppos, attention_mask=attn).logits[0]
    lp = torch.log_softmax(logits, -1)
    obj = lp[kpos, ids[0, kpos + 1]].sum()  # position p predicts token p+1
    obj.backward()
    rec.end_micro()
    packed = rec.captured()
    assert (
        packed.rows.tolist() == padded.rows.tolist()
        and packed.token_index.tolist() == padded.token_index.tolist()
    )
    for a, b in zip(padded.modules, packed.modules):
        assert torch.allclose(a.u, b.u, atol=1e-10, rtol=0) and torch.allclose(a.v, b.v, atol=1e-10, rtol=0)


def test_gradient_checkpointing_does_not_capture_twice():
    batch = make_batch()
    results = []
    for ckpt in (False, True):
        model = tiny_model()
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        rec = InfluenceRecorder(model, settings(), identity_projection=True)
        from influence_fixtures import pad_rows

        pb = pad_rows(batch, batch.rows)
        pos, rid, tok = capture_positions(batch, batch.rows, pb)
        rec.begin_micro(pos, rid, tok)
        logp, mask, _ = padded_logprob_terms(model, batch, batch.rows)
        (logp * mask).sum().backward()
        rec.end_micro()
        results.append(rec.captured())
    for a, b in zip(results[0].modules, results[1].modules):
        assert a.u.shape == b.u.shape
        assert torch.allclose(a.u, b.u, atol=1e-8, rtol=0) and torch.allclose(a.v, b.v, atol=1e-8, rtol=0)


def test_separate_backward_fires_hooks_and_leaves_grad_untouched():
    model, batch = tiny_model(), make_batch()
    s = settings(output_function="log_prob_advantage")
    tracer = InfluenceTracer(model, s, identity_projection=True)
    metas = batch.metas("log_prob_advantage")
    tracer.begin_step(metas, batch.lengths())
    from influence_fixtures import pad_rows

    sentinel = {n: torch.full_like(p, 0.125) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    pb = pad_rows(batch, batch.rows)
    pos, rid, tok = capture_positions(batch, batch.rows, pb)

    def objective():
        logp, mask, _ = padded_logprob_terms(model, batch, batch.rows)
        adv = torch.tensor([r - 0.5 for r in batch.rewards], dtype=logp.dtype)
        return (logp * mask * adv[:, None]).sum()

    tracer.separate_backward(objective, pos, rid, tok)
    assert tracer.recorder.tokens_captured == pos.numel()
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, sentinel[n]), n
    per_row, metrics = tracer.finish_step()
    assert metrics["influence/rows_emitted"] == 12  # 3 mixed groups x 4; the constant groups are skipped
    assert metrics["influence/groups_skipped_all_same"] == 2


def test_separate_backward_frees_the_module_outputs_it_kept():
    """The outputs kept for autograd.grad die with the micro-batch, by reference counting alone
    (a slot -> output -> hook closure -> slot cycle would keep every traced module's activations
    alive until the garbage collector ran: out of memory on a GPU)."""
    import gc
    import weakref

    model, batch = tiny_model(), make_batch()
    tracer = InfluenceTracer(model, settings(output_function="log_prob"), identity_projection=True)
    tracer.begin_step(batch.metas("log_prob"), batch.lengths())
    from influence_fixtures import pad_rows

    pb = pad_rows(batch, batch.rows)
    pos, rid, tok = capture_positions(batch, batch.rows, pb)
    kept: list[weakref.ref] = []
    original = tracer.recorder.captured_outputs

    def captured_outputs():
        outs = original()
        kept.extend(weakref.ref(t) for t in outs)
        return outs

    tracer.recorder.captured_outputs = captured_outputs

    def objective():
        logp, mask, _ = padded_logprob_terms(model, batch, batch.rows)
        return (logp * mask).sum()

    gc.collect()
    gc.disable()
    try:
        tracer.separate_backward(objective, pos, rid, tok)
        assert len(kept) == len(tracer.recorder.names) > 0
        assert [r() for r in kept] == [None] * len(kept)
        # and when the objective raises half-way, nothing is kept either
        kept.clear()

        def failing():
            objective()
            tracer.recorder.captured_outputs()
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            tracer.separate_backward(failing, pos, rid, tok)
        assert kept and [r() for r in kept] == [None] * len(kept)
    finally:
        gc.enable()


def test_factors_copied_to_host_asynchronously_are_waited_for_before_use():
    """Non-blocking device-to-host copies leave an event; `captured()` waits on every one."""
    model = tiny_model()
    rec = InfluenceRecorder(model, settings(grad_offload_to_cpu=True), identity_projection=True)
    waited = []

    class Event:
        def synchronize(self):
            waited.append(True)

    rec._copies = [Event(), Event()]
    rec.captured()
    assert waited == [True, True] and rec._copies == []


def test_hessian_above_cap_is_refused_with_memory_figure():
    model = tiny_model()
    # factor 1 is a random square projection: D = 32·16 = 512 for down_proj, above the cap
    with pytest.raises(ValueError, match=r"GiB.*max_hessian_dim"):
        InfluenceRecorder(model, settings(projection="rademacher", max_hessian_dim=100))
    # the exact mode never forms a D×D Hessian (Woodbury); it is checked against memory instead
    rec = InfluenceRecorder(model, settings(projection="identity", max_hessian_dim=100))
    assert rec.dims == [(16, 16), (32, 16), (16, 16), (32, 16)]


# ----------------------------------------------------------------------------- scoring
@pytest.mark.parametrize(
    "mode,source,agg,scope,rgrad",
    [
        *itertools.product(
            ["inverse"], ["response", "token"], ["sum", "mean"], ["per_prompt", "all_selected"], ["sum"]
        ),
        *itertools.product(
            ["identity"], ["response"], ["sum", "mean"], ["per_prompt", "all_selected"], ["sum"]
        ),
        ("inverse", "response", "sum", "per_prompt", "mean"),
        ("inverse", "token", "mean", "all_selected", "mean"),
    ],
)
def test_identity_projection_matches_brute_force(mode, source, agg, scope, rgrad):
    model, batch = tiny_model(), make_batch()
    s = settings(
        hessian_mode=mode,
        hessian_source=source,
        contrastive_agg=agg,
        accepted_rejected_scope=scope,
        response_grad=rgrad,
    )
    metas = batch.metas("log_prob")
    expected = brute_force(model, batch, s, metas)
    per_row, _ = tracer_scores(model, batch, s, metas)
    checked = 0
    for (r, t), value in expected.items():
        got = float(per_row[r][t])
        if np.isnan(value):
            assert np.isnan(got)
        else:
            assert got == pytest.approx(value, rel=1e-9, abs=1e-12)
            checked += 1
    assert checked > 30


@pytest.mark.parametrize("mode", ["identity", "inverse"])
def test_advantage_signed_output_equals_log_prob_up_to_scale(mode):
    """With |A| equal for all responses, log_prob_advantage scores are log_prob scores times A²
    (identity) or exactly equal (inverse with auto λ): σ removes the sign of A on both sides."""
    model, batch = tiny_model(), make_batch()
    base, _ = tracer_scores(model, batch, settings(hessian_mode=mode), batch.metas("log_prob"))
    adv = [1.5 if r > 0.5 else -1.5 for r in batch.rewards]
    weighted, _ = tracer_scores(
        model,
        batch,
        settings(hessian_mode=mode, output_function="log_prob_advantage"),
        batch.metas("log_prob_advantage", advantages=adv),
        weights=adv,
    )
    factor = 2.25 if mode == "identity" else 1.0
    for r in per_rows_with_scores(base):
        assert torch.allclose(weighted[r], base[r] * factor, rtol=1e-8, atol=1e-12, equal_nan=True)


def per_rows_with_scores(per_row):
    return [r for r, v in per_row.items() if bool(torch.isfinite(v).any())]


def test_woodbury_equals_cholesky():
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    d = torch.randn(40, generator=gen, dtype=torch.float64)
    lam = 0.3
    dense = torch.linalg.solve(G.t() @ G + lam * torch.eye(40, dtype=torch.float64), d)
    assert torch.allclose(solve_response_hessian(G, d, lam), dense, rtol=1e-10, atol=1e-12)
    tall = torch.randn(60, 40, generator=gen, dtype=torch.float64)  # R >= D takes the Cholesky path
    dense2 = torch.linalg.solve(tall.t() @ tall + lam * torch.eye(40, dtype=torch.float64), d)
    assert torch.allclose(solve_response_hessian(tall, d, lam), dense2, rtol=1e-10, atol=1e-12)
    U = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    V = torch.randn(9, 8, generator=gen, dtype=torch.float64)
    Gt = (U[:, :, None] * V[:, None, :]).reshape(9, 40)
    dense3 = torch.linalg.solve(Gt.t() @ Gt + lam * torch.eye(40, dtype=torch.float64), d)
    assert torch.allclose(solve_token_hessian(U, V, d, lam), dense3, rtol=1e-10, atol=1e-12)
    U2 = torch.randn(50, 5, generator=gen, dtype=torch.float64)
    V2 = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    G2 = (U2[:, :, None] * V2[:, None, :]).reshape(50, 40)
    dense4 = torch.linalg.solve(G2.t() @ G2 + lam * torch.eye(40, dtype=torch.float64), d)
    assert torch.allclose(solve_token_hessian(U2, V2, d, lam), dense4, rtol=1e-10, atol=1e-12)


def test_auto_lambda_makes_inverse_mode_scale_free():
    gen = torch.Generator().manual_seed(2)
    G = torch.randn(5, 30, generator=gen, dtype=torch.float64)
    d = G[0] - G[3]
    a = solve_response_hessian(G, d, 0.0)
    b = solve_response_hessian(3.0 * G, 3.0 * d, 0.0)
    assert torch.allclose(b * 3.0, a, rtol=1e-10)  # score g_t·H⁻¹d is invariant to a global scale c


@pytest.mark.parametrize("micro", [1, 2, 4, 7])
def test_micro_batch_split_and_accumulation_do_not_change_scores(micro):
    model, batch = tiny_model(), make_batch()
    s = settings()
    metas = batch.metas("log_prob")
    whole, _ = tracer_scores(model, batch, s, metas)
    split, _ = tracer_scores(model, batch, s, metas, micro=micro, normalise=True)
    for r in whole:
        assert torch.allclose(whole[r], split[r], rtol=1e-6, atol=1e-9, equal_nan=True)


def test_per_module_scores_sum_to_total():
    model, batch = tiny_model(), make_batch()
    s = settings()
    tracer = InfluenceTracer(model, s, identity_projection=True)
    tracer.begin_step(batch.metas(), batch.lengths())
    run_logprob_capture(model, batch, tracer)
    from archer.influence.scoring import score_tokens

    res = score_tokens(tracer.recorder.captured(), tracer.metas, s)
    assert len(res.per_module) == 4
    finite = torch.isfinite(res.scores)
    assert torch.allclose(torch.stack(res.per_module).sum(0)[finite], res.scores[finite], atol=1e-10)


def test_permuting_responses_permutes_scores():
    model, batch = tiny_model(), make_batch()
    s = settings()
    base, _ = tracer_scores(model, batch, s, batch.metas())
    perm = torch.randperm(len(batch.rows), generator=torch.Generator().manual_seed(3)).tolist()
    from influence_fixtures import Batch

    shuffled = Batch(
        [batch.prompts[i] for i in perm],
        [batch.responses[i] for i in perm],
        [batch.groups[i] for i in perm],
        [batch.rewards[i] for i in perm],
    )
    moved, _ = tracer_scores(model, shuffled, s, shuffled.metas())
    for new_row, old_row in enumerate(perm):
        assert torch.allclose(moved[new_row], base[old_row], rtol=1e-8, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("output_function", ["log_prob", "log_prob_advantage", "training_loss"])
def test_planted_tokens_get_the_right_sign(output_function):
    """A token shared by the accepted responses scores > 0 and one shared by the rejected responses
    < 0, whatever the output function (no sign double-count on advantage-signed outputs)."""
    model = tiny_model(seed=5)
    from influence_fixtures import Batch

    g = torch.Generator().manual_seed(7)
    prompt = [5, 6, 7]
    good, bad = 9, 17
    responses, rewards = [], []
    for k in range(8):
        body = torch.randint(3, 24, (4,), generator=g).tolist()
        accepted = k < 4
        responses.append(body[:2] + [good if accepted else bad] + body[2:])
        rewards.append(1.0 if accepted else 0.0)
    batch = Batch([prompt] * 8, responses, [0] * 8, rewards)
    adv = [1.0 if r else -1.0 for r in rewards]
    s = settings(output_function=output_function)
    metas = batch.metas(output_function, advantages=adv)
    # training_loss captures the gradient of -L with L = -A·logp; log_prob_advantage of A·logp;
    # log_prob of logp
    weights = None if output_function == "log_prob" else adv
    per_row, _ = tracer_scores(model, batch, s, metas, weights=weights)
    planted = [float(per_row[r][2]) for r in range(8)]
    assert all(v > 0 for v in planted[:4]), planted
    assert all(v < 0 for v in planted[4:]), planted


def test_random_projection_approaches_exact_as_k_grows():
    model, batch = tiny_model(hidden=24, inter=48), make_batch(seed=4)
    s_exact = settings(module_name_filter=r"layers\.1\.mlp\.down_proj$", hessian_mode="inverse")
    metas = batch.metas()
    exact, _ = tracer_scores(model, batch, s_exact, metas)
    keys = [(r, t) for r, v in exact.items() for t in range(v.numel()) if torch.isfinite(v[t])]
    ex = [float(exact[r][t]) for r, t in keys]
    full = 48 * 24
    means = []
    for factor in (8, 4, 2):
        rhos = []
        for seed in range(4):
            s = settings(
                module_name_filter=r"layers\.1\.mlp\.down_proj$",
                projection="rademacher",
                projection_dim_factor=factor,
                max_proj_vector_sum=0,
                max_hessian_dim=0,
            )
            tracer = InfluenceTracer(model, s)
            # vary the projection across seeds by renaming the module's seed key
            tracer.recorder._proj = [
                (
                    projection_matrix(f"seed{seed}:{n}", "in", k_in, 48),
                    projection_matrix(f"seed{seed}:{n}", "out", k_out, 24),
                )
                for n, (k_in, k_out) in zip(tracer.recorder.names, tracer.recorder.dims)
            ]
            tracer.begin_step(metas, batch.lengths())
            run_logprob_capture(model, batch, tracer)
            per_row, _ = tracer.finish_step()
            tracer.close()
            model.zero_grad(set_to_none=True)
            rhos.append(spearman(ex, [float(per_row[r][t]) for r, t in keys]))
        D = tracer.recorder.module_dims[0]
        means.append((D, float(np.mean(rhos)), min(rhos)))
    Ds = [m[0] for m in means]
    assert Ds == sorted(Ds)
    assert means[0][1] < means[-1][1]  # rises with k
    for D, _mean_rho, min_rho in means:
        if D >= full / 3:
            assert min_rho >= 0.8, means


def test_bf16_storage_matches_fp32_ranking():
    model, batch = tiny_model(hidden=32, inter=64), make_batch(seed=6)
    model = model.float()
    metas = batch.metas()
    out = []
    for storage in ("fp32", "bf16"):
        s = settings(
            module_name_filter=r"mlp\.down_proj$",
            projection="rademacher",
            projection_dim_factor=2,
            storage_dtype=storage,
        )
        tracer = InfluenceTracer(model, s)
        tracer.begin_step(metas, batch.lengths())
        run_logprob_capture(model, batch, tracer)
        per_row, _ = tracer.finish_step()
        tracer.close()
        model.zero_grad(set_to_none=True)
        out.append(torch.cat([per_row[r] for r in sorted(per_row)]))
    finite = torch.isfinite(out[0]) & torch.isfinite(out[1])
    assert finite.sum() > 30
    assert spearman(out[0][finite].numpy(), out[1][finite].numpy()) >= 0.99


def test_acceptance_rules_and_group_selection():
    rewards = [1.0, 0.0, 0.5, 0.5, 0.0, 0.0]
    groups = [0, 0, 1, 1, 2, 2]
    assert accepted_mask(rewards, groups) == [True, False, True, True, True, True]
    assert accepted_mask(rewards, groups, rule="threshold", threshold=0.4) == [
        True,
        False,
        True,
        True,
        False,
        False,
    ]
    chosen, constant = select_groups(groups, accepted_mask(rewards, groups))
    assert chosen == [0] and constant == 2
    many = [g for g in range(5) for _ in range(2)]
    acc = [i % 2 == 0 for i in range(10)]
    assert select_groups(many, acc, max_prompts=2)[0] == [0, 1]


def test_acceptance_is_correctness_when_known_in_both_engines():
    """A correct answer penalised for its length (0.8) is accepted; an all-wrong group whose
    penalties differ has no contrast. Without correctness the reward decides, as before."""
    from types import SimpleNamespace

    from archer.core.engines.local.influence_step import LocalInfluence
    from archer.influence.selection import plan_step

    rewards = [1.0, 0.8, 0.0, -0.2, 0.0, -0.5]
    correct = [True, True, False, False, False, False]
    groups = ["a", "a", "a", "b", "b", "b"]
    adv = [0.5, 0.3, -0.8, 0.0, 0.2, -0.3]
    s = settings()
    metas, accepted, constant = plan_step(rewards, adv, groups, s, correct=correct)
    assert accepted[:3] == correct[:3] and constant == 1  # group b: all alike (no contrast)
    assert [(m.row, m.accepted) for m in metas] == [(0, True), (1, True), (2, False)]
    _, by_reward, constant = plan_step(rewards, adv, groups, s)
    assert by_reward == [True, False, False, False, True, False] and constant == 0
    # the local engine plans with the same rule and passes its correctness on
    local = LocalInfluence(tiny_model(), s)
    rollout = SimpleNamespace(response_lengths=torch.tensor([5, 9, 3, 4, 4, 8]))
    local.begin(rollout, torch.tensor(rewards), torch.tensor(adv), groups, correct=correct)
    assert local.accepted == [True, True, False, None, None, None]
    assert sorted(local.selected) == [0, 1, 2]


def test_max_tokens_per_response_leaves_nan_for_uncaptured_tokens():
    model, batch = tiny_model(), make_batch()
    s = settings(max_tokens_per_response=2)
    tracer = InfluenceTracer(model, s, identity_projection=True)
    tracer.begin_step(batch.metas(), batch.lengths())
    from influence_fixtures import pad_rows

    pb = pad_rows(batch, batch.rows)
    pos, rid, tok = capture_positions(batch, batch.rows, pb, max_tokens=2)
    with tracer.micro(pos, rid, tok):
        logp, mask, _ = padded_logprob_terms(model, batch, batch.rows)
        (logp * mask).sum().backward()
    per_row, metrics = tracer.finish_step()
    for r, v in per_row.items():
        if batch.groups[r] < 3:
            assert int(torch.isfinite(v).sum()) == min(2, len(batch.responses[r]))
    assert metrics["influence/tokens_captured"] == pos.numel()


def test_config_section_and_settings_agree():
    """The `influence.*` config keys are exactly the tracer's settings, with the same defaults."""
    import dataclasses

    from omegaconf import OmegaConf

    from archer.core.config.schema import InfluenceConfig
    from archer.influence.settings import InfluenceSettings

    cfg = OmegaConf.to_container(OmegaConf.structured(InfluenceConfig))
    assert cfg == dataclasses.asdict(InfluenceSettings())
    assert InfluenceSettings.from_mapping(OmegaConf.structured(InfluenceConfig)) == InfluenceSettings()


# ----------------------------------------------------------------------------- exact mode, leave-one-out
def _assert_matches(expected, per_row, rel=1e-9):
    checked = 0
    for (r, t), value in expected.items():
        got = float(per_row[r][t])
        if np.isnan(value):
            assert np.isnan(got), (r, t)
        else:
            assert got == pytest.approx(value, rel=rel, abs=1e-12), (r, t)
            checked += 1
    assert checked > 30


@pytest.mark.parametrize(
    "mode,source,agg,scope,rgrad",
    [
        *itertools.product(
            ["inverse"], ["response", "token"], ["sum", "mean"], ["per_prompt", "all_selected"], ["sum"]
        ),
        *itertools.product(
            ["identity"], ["response"], ["sum", "mean"], ["per_prompt", "all_selected"], ["sum"]
        ),
        ("inverse", "response", "mean", "per_prompt", "mean"),
        ("inverse", "token", "sum", "per_prompt", "mean"),
    ],
)
def test_leave_one_out_matches_brute_force(mode, source, agg, scope, rgrad):
    """Tokens of response r scored against the contrast of the unit without r and, in inverse mode,
    the Hessian without r (H − g_r g_rᵀ, or minus r's token terms), with the unit's λ: against an
    explicit per-response D×D solve in float64."""
    model, batch = tiny_model(), make_batch()
    s = settings(
        hessian_mode=mode,
        hessian_source=source,
        contrastive_agg=agg,
        accepted_rejected_scope=scope,
        response_grad=rgrad,
        contrast="leave_one_out",
    )
    metas = batch.metas("log_prob")
    expected = brute_force(model, batch, s, metas)
    per_row, _ = tracer_scores(model, batch, s, metas)
    _assert_matches(expected, per_row)
    # and it is not the include contrast
    include, _ = tracer_scores(model, batch, dataclasses.replace(s, contrast="include"), metas)
    differs = [r for r in per_rows_with_scores(per_row) if not torch.allclose(per_row[r], include[r])]
    assert len(differs) == len(per_rows_with_scores(per_row))


@pytest.mark.parametrize(
    "source,contrast", [("response", "include"), ("token", "include"), ("response", "leave_one_out")]
)
def test_rank_damping_matches_brute_force_and_differs_from_dimension_damping(source, contrast):
    """damping=rank: λ = 0.1·tr(H₀)/min(rows, D), rows the unit's responses (or tokens)."""
    model, batch = tiny_model(), make_batch()
    s = settings(hessian_mode="inverse", hessian_source=source, contrast=contrast, damping="rank")
    metas = batch.metas("log_prob")
    expected = brute_force(model, batch, s, metas)
    per_row, _ = tracer_scores(model, batch, s, metas)
    _assert_matches(expected, per_row)
    by_dim, _ = tracer_scores(model, batch, dataclasses.replace(s, damping="dimension"), metas)
    assert any(not torch.allclose(per_row[r], by_dim[r]) for r in per_rows_with_scores(per_row))


def test_leave_one_out_with_a_lone_accepted_response_scores_against_the_rejected_only():
    """A group with one accepted response: leaving it out empties the accepted side, so with
    `mean` its tokens are scored against −mean(rejected) (identity mode: g_t·(−ḡ_rej))."""
    model = tiny_model(seed=2)
    from influence_fixtures import Batch

    g = torch.Generator().manual_seed(9)
    responses = [torch.randint(3, 24, (5,), generator=g).tolist() for _ in range(4)]
    batch = Batch([[4, 5, 6]] * 4, responses, [0] * 4, [1.0, 0.0, 0.0, 0.0])
    s = settings(hessian_mode="identity", contrastive_agg="mean", contrast="leave_one_out")
    expected = brute_force(model, batch, s, batch.metas())
    per_row, _ = tracer_scores(model, batch, s, batch.metas())
    for (r, t), value in expected.items():
        assert float(per_row[r][t]) == pytest.approx(value, rel=1e-9, abs=1e-12)


def test_identity_projection_is_exact_whatever_the_factor_and_caps():
    """`projection=identity` ignores projection_dim_factor and the caps (full dimension, exact),
    while `projection_dim_factor=1` is a random square projection and is not exact."""
    model, batch = tiny_model(), make_batch()
    metas = batch.metas()
    exact_s = settings(projection="identity", projection_dim_factor=32, max_proj_vector_sum=4)
    expected = brute_force(model, batch, exact_s, metas)
    tracer = InfluenceTracer(model, exact_s)
    assert tracer.recorder.dims == [(16, 16), (32, 16), (16, 16), (32, 16)]
    tracer.begin_step(metas, batch.lengths())
    run_logprob_capture(model, batch, tracer)
    per_row, _ = tracer.finish_step()
    tracer.close()
    model.zero_grad(set_to_none=True)
    _assert_matches(expected, per_row)

    square = settings(projection="rademacher", projection_dim_factor=1)
    tracer = InfluenceTracer(model, square)
    assert tracer.recorder.dims == [(16, 16), (32, 16), (16, 16), (32, 16)]  # same size, random matrix
    tracer.begin_step(metas, batch.lengths())
    run_logprob_capture(model, batch, tracer)
    projected, _ = tracer.finish_step()
    tracer.close()
    keys = [k for k, v in expected.items() if not np.isnan(v)]
    ex = np.array([expected[k] for k in keys])
    pr = np.array([float(projected[r][t]) for r, t in keys])
    assert np.linalg.norm(pr - ex) / np.linalg.norm(ex) > 0.01


def test_exact_mode_is_refused_with_a_memory_figure_when_the_step_does_not_fit(monkeypatch):
    import archer.influence.tracer as tracer_mod

    model, batch = tiny_model(), make_batch()
    metas = batch.metas()
    s = settings(projection="identity")
    tracer = InfluenceTracer(model, s)
    n_tok = sum(len(batch.responses[m.row]) for m in metas)
    est = tracer.memory_estimate(metas, {m.row: len(batch.responses[m.row]) for m in metas})
    # float64 model with fp32 storage: 8 bytes per number, (k_in + k_out) numbers per module and token
    assert est["factors"] == n_tok * (32 + 48 + 32 + 48) * 8
    assert est["scoring"] > 0
    monkeypatch.setattr(tracer_mod, "available_memory_bytes", lambda device: 10_000)
    with pytest.raises(
        tracer_mod.InfluenceMemoryError, match=r"projection=identity.*GiB.*free on cpu"
    ) as err:
        tracer.begin_step(metas, batch.lengths())
    assert err.value.needed == est["factors"] + est["scoring"] and err.value.available == 10_000
    # a random projection is never checked this way (its D is capped when the tracer is built)
    InfluenceTracer(model, settings(projection="rademacher", projection_dim_factor=4)).begin_step(
        metas, batch.lengths()
    )
    monkeypatch.setattr(tracer_mod, "available_memory_bytes", lambda device: 1 << 40)
    tracer.begin_step(metas, batch.lengths())  # fits


def _explicit_loo(T_rows, blocks, coef_rows, lam):
    """H₋ᵣ⁻¹(Σ_i coef[r, i] b_i) with H₋ᵣ = Σ_{rows not in block r} b bᵀ + λI, one dense solve each."""
    D = T_rows.shape[1]
    out = []
    for r, idx in enumerate(blocks):
        keep = [i for i in range(T_rows.shape[0]) if i not in set(idx.tolist())]
        H = T_rows[keep].t() @ T_rows[keep] + lam * torch.eye(D, dtype=torch.float64)
        out.append(torch.linalg.solve(H, coef_rows[r] @ T_rows))
    return torch.stack(out)


def test_kernel_and_dense_leave_one_out_directions_equal_explicit_solves():
    from archer.influence.scoring import dense_token_loo_directions, kernel_directions, token_gram64

    gen = torch.Generator().manual_seed(4)
    lam = 0.05
    # response source: blocks are single rows; kernel form whatever R vs D
    for R, D in ((6, 40), (12, 8)):
        G = torch.randn(R, D, generator=gen, dtype=torch.float64)
        C = torch.randn(R, R, generator=gen, dtype=torch.float64)
        C.fill_diagonal_(0.0)
        blocks = [torch.tensor([r]) for r in range(R)]
        beta = kernel_directions(G @ G.t(), C.t(), lam, blocks)
        assert torch.allclose(beta.t() @ G, _explicit_loo(G, blocks, C, lam), rtol=1e-9, atol=1e-11)
    # token source: blocks of tokens, kernel form (N < D) and dense downdate (N >= D)
    for N, ko, ki in ((10, 5, 8), (30, 3, 4)):
        U = torch.randn(N, ko, generator=gen, dtype=torch.float64)
        V = torch.randn(N, ki, generator=gen, dtype=torch.float64)
        T = (U[:, :, None] * V[:, None, :]).reshape(N, ko * ki)
        resp = torch.arange(N) % 3
        blocks = [(resp == r).nonzero().flatten() for r in range(3)]
        G = torch.stack([T[b].sum(0) for b in blocks])
        C = torch.tensor([[0.0, -1.0, 2.0], [1.0, 0.0, -1.0], [0.5, -0.5, 0.0]], dtype=torch.float64)
        expected = _explicit_loo(T, blocks, C @ torch.stack([(resp == r).double() for r in range(3)]), lam)
        per_token = C.t().index_select(0, resp)
        beta = kernel_directions(token_gram64(U, V), per_token, lam, blocks)
        kernel = torch.stack([(U.t() @ (V * beta[:, r, None])).reshape(-1) for r in range(3)])
        assert torch.allclose(kernel, expected, rtol=1e-9, atol=1e-11)
        dense = dense_token_loo_directions(U, V, blocks, G, C, lam)
        assert torch.allclose(dense, expected, rtol=1e-9, atol=1e-11)


def test_the_trace_summary_records_the_contrast_for_collect_and_the_viewer(tmp_path):
    """The local engine writes the settings as they are (record.trace_summary); readers get the
    contrast from summary.json through one function (no torch)."""
    from archer.core.rollout.record import trace_summary
    from archer.core.trace import TraceReader, TraceWriter
    from archer.core.trace.schema import influence_contrast

    s = InfluenceSettings(enable=True, contrast="leave_one_out")
    summary = trace_summary(
        engine="local",
        preset=None,
        run_dir=tmp_path,
        model_path=None,
        rollout_n=4,
        influence=dataclasses.asdict(s),
    )
    assert influence_contrast(summary) == "leave_one_out"
    with TraceWriter(tmp_path / "trace", summary):
        pass
    assert TraceReader(tmp_path).influence_contrast == "leave_one_out"
    off = trace_summary(engine="local", preset=None, run_dir=tmp_path, model_path=None, rollout_n=4)
    assert influence_contrast(off) is None
    assert influence_contrast({"influence": True}) == "include"  # traces from before the setting
    with pytest.raises(ValueError, match="influence.contrast must be one of include, leave_one_out"):
        InfluenceSettings(contrast="loo").validate()
