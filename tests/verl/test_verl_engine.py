"""verl's real FSDP2 engine + archer's training worker vs archer's local engine, on CPU.

Same tiny Qwen2 weights (fp32, SDPA), same step (4 prompt groups x 4 responses, two of them mixed;
old log-probs and GRPO advantages from the local engine), rows handed to verl in a shuffled order; packed
(remove-padding), packed with dynamic batching (rows regrouped by token budget), right-padded, and
packed with verl's gradient checkpointing (forward hooks re-run in the backward). Per-token
influence of every selected response and per-token entropy must equal the local engine's:
tolerance 1e-5 of the largest score in identity mode (|Δ| measured about 1e-6), 2e-4 with the
inverse token Hessian (measured 3e-5: the solve amplifies fp32 rounding), entropy to 1e-5
absolute (measured 2e-6). Identity-mode scores scale with the square of the captured gradients, so a
wrong loss normaliser (verl divides by the mini-batch's token count x dp_size) would be off by orders of
magnitude, not by 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

import torch  # noqa: E402
import verl_cpu_platform  # noqa: E402,F401  (before any verl.workers import)
import verl_harness as H  # noqa: E402

pytestmark = pytest.mark.verl

SCORE_RTOL = 1e-5
INVERSE_RTOL = 2e-4  # H⁻¹ amplifies fp32 rounding (measured 3e-5)
ENTROPY_ATOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return H.save_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def step():
    return H.make_step(seed=3)


def _run_verl(model_dir, step, ref, settings, order, before_update=None, masks=None, **worker_kw):
    """One archer_sync update on verl's engine; returns (per-row influence, metrics, micro-batch rows seen).
    `before_update(worker)` runs first, on the initial weights."""
    worker = H.training_worker(model_dir, settings, **worker_kw)
    if before_update is not None:
        before_update(worker)
    seen: list[list[int]] = []
    wrapped = worker.engine.forward_step

    def spy(micro_batch, loss_function, forward_only):
        if not forward_only:
            seen.append(micro_batch["archer_row"].tolist())
        return wrapped(micro_batch, loss_function=loss_function, forward_only=forward_only)

    worker.engine.forward_step = spy
    td = H.update_meta(
        H.v1_rows(
            step,
            ref["old"],
            ref["advantages"],
            H.influence_plan(step, ref["advantages"], settings, masks).fields,
            order,
            masks,
        ),
        mini_batch_size=step.size,
    )
    worker.train_mini_batch(td)
    rows, metrics = worker.archer_take_influence()
    assert worker.archer_take_influence() is None  # taken once
    return worker, rows, metrics, seen


def _assert_same_influence(rows, ref_rows, selected, rtol=SCORE_RTOL):
    assert sorted(rows) == selected
    scale = max(float(np.nanmax(np.abs(ref_rows[r]))) for r in selected)
    for r in selected:
        assert rows[r].shape == ref_rows[r].shape
        assert np.isfinite(rows[r]).all()
        np.testing.assert_allclose(rows[r], ref_rows[r], rtol=0, atol=rtol * scale, err_msg=f"row {r}")


@pytest.mark.parametrize("layout", ["packed", "dynamic", "padded", "checkpointed"])
def test_influence_and_entropy_match_local_engine(model_dir, step, layout):
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import response_from_nested

    settings = H.influence_settings()
    ref = H.local_reference(model_dir, step, settings)
    order = [int(i) for i in np.random.default_rng(7).permutation(step.size)]

    def check_entropy(worker):
        """Entropy of the old-log-prob pass (verl's infer_batch with calculate_entropy), per row."""
        td = H.v1_rows(step, ref["old"], ref["advantages"], None, order)
        tu.assign_non_tensor(td, calculate_entropy=True, compute_loss=False, temperature=1.0)
        out = worker.infer_batch(td)
        recorder = worker._archer_influence.tracer.recorder
        assert recorder.micro_batches == 0 and recorder._ctx is None, "no capture during log-prob inference"
        entropy = response_from_nested(out["entropy"], td["response_mask"])
        for j, i in enumerate(order):
            L = len(step.responses[i])
            np.testing.assert_allclose(
                entropy[j].float().numpy(), ref["entropy"][i, :L].numpy(), rtol=0, atol=ENTROPY_ATOL
            )

    _, rows, metrics, seen = _run_verl(
        model_dir,
        step,
        ref,
        settings,
        order,
        before_update=check_entropy,
        dynamic=layout == "dynamic",
        remove_padding=layout != "padded",
        checkpointing=layout == "checkpointed",
    )
    selected = step.traced_rows()  # the all-right and all-wrong groups have no contrast
    _assert_same_influence(rows, ref["influence"], selected)
    assert metrics["influence/groups_selected"] == 2 and metrics["influence/rows_emitted"] == len(selected)
    assert metrics["influence/tokens_captured"] == sum(len(step.responses[r]) for r in selected)
    flat = [r for mb in seen for r in mb]
    assert sorted(flat) == list(range(step.size))
    if layout == "dynamic":  # rows were regrouped by token budget, not kept in the order given
        assert flat != order


def test_agent_rows_influence_matches_local_engine_with_tool_results_out_of_the_loss(model_dir, step):
    """Influence in agent mode on verl (issue 21): rows whose tool-result tokens carry response_mask
    = loss_mask 0, as archer's agent loop hands them to verl. The selected groups' per-token scores
    equal the local engine's agent mode (loss_mask 0 on the same tokens) to 1e-5 of the largest, every
    token finite, tool results included (they steer later tokens as context, docs/agentic.md);
    garbage old log-probs and advantages on the tool-result tokens change nothing (they are out of
    the loss), while the same rows without the mask score differently (the mask is in effect)."""
    settings = H.influence_settings()
    masks = H.tool_result_masks(step)
    assert sum(m.count(0) for m in masks) > 0
    ref = H.local_reference(model_dir, step, settings, loss_masks=masks)
    order = [int(i) for i in np.random.default_rng(11).permutation(step.size)]
    _, rows, metrics, _ = _run_verl(model_dir, step, ref, settings, order, masks=masks)
    selected = step.traced_rows()
    _assert_same_influence(rows, ref["influence"], selected)
    assert metrics["influence/tokens_captured"] == sum(len(step.responses[r]) for r in selected)
    tool_scores = np.concatenate([rows[r][np.array(masks[r]) == 0] for r in selected])
    assert tool_scores.size and np.isfinite(tool_scores).all()

    garbage = dict(ref)  # what a tool-result token holds must not matter: it carries no loss
    noise = torch.randn(ref["old"].shape, generator=torch.Generator().manual_seed(2)) * 5
    off = torch.zeros_like(ref["old"], dtype=torch.bool)
    for i, m in enumerate(masks):
        off[i, : len(m)] = torch.as_tensor(m) == 0
    garbage["old"] = torch.where(off, ref["old"] + noise, ref["old"])
    garbage["advantages"] = torch.where(off, noise, ref["advantages"])
    _, rows_g, _, _ = _run_verl(model_dir, step, garbage, settings, order, masks=masks)
    _assert_same_influence(rows_g, ref["influence"], selected)

    plain = H.local_reference(model_dir, step, settings)
    scale = max(float(np.abs(ref["influence"][r]).max()) for r in selected)
    assert (
        max(float(np.abs(plain["influence"][r] - ref["influence"][r]).max()) for r in selected) > 1e-3 * scale
    )


@pytest.mark.parametrize(
    "loss,mode,rtol", [("archer", "identity", SCORE_RTOL), ("aspo", "inverse", INVERSE_RTOL)]
)
def test_dual_token_losses_match_local_engine(model_dir, step, loss, mode, rtol):
    """archer's entropy-split losses inside verl's ppo_loss (entropy and knobs through archer's loss
    wrapper), with ratios pushed out of the clip ranges; ASPO with token-Hessian-preconditioned scores."""
    settings = H.influence_settings(hessian_mode=mode, hessian_source="token")
    knobs = {
        "token_entropy_quantile": 0.5,
        "low_entropy_clip_ratio_low": 0.05,
        "low_entropy_clip_ratio_high": 0.05,
        "high_entropy_clip_ratio_low": 0.3,
        "high_entropy_clip_ratio_high": 0.3,
    }
    ref = H.local_reference(
        model_dir, step, settings, policy_loss=loss, archer=knobs, aspo_dual_clip=2.0, old_noise=0.3
    )
    vanilla = H.local_reference(model_dir, step, settings, old_noise=0.3)
    selected = step.traced_rows()
    assert any(
        not np.allclose(ref["influence"][r], vanilla["influence"][r]) for r in selected
    )  # the loss matters
    order = list(range(step.size))[::-1]
    _, rows, _, _ = _run_verl(
        model_dir, step, ref, settings, order, policy_loss=loss, loss_knobs={**knobs, "aspo_dual_clip": 2.0}
    )
    _assert_same_influence(rows, ref["influence"], selected, rtol)


@pytest.mark.parametrize("output_function", ["log_prob", "log_prob_advantage", "log_prob_reward"])
def test_other_output_functions_match_local_engine(model_dir, step, output_function):
    """The output functions captured by an extra forward+backward (archer.influence.outputs): on
    verl it runs through the engine's own forward_backward_batch before the update, packed and with
    dynamic batching; per-token scores equal the local engine's extra pass, and the update that
    follows is the same as without influence (its gradients are zeroed before the real step)."""
    settings = H.influence_settings(output_function=output_function)
    ref = H.local_reference(model_dir, step, settings)
    order = [int(i) for i in np.random.default_rng(11).permutation(step.size)]
    worker, rows, metrics, seen = _run_verl(model_dir, step, ref, settings, order, dynamic=True)
    selected = step.traced_rows()
    _assert_same_influence(rows, ref["influence"], selected)
    assert metrics["influence/tokens_captured"] == sum(len(step.responses[r]) for r in selected)
    # two passes over every row: the capture pass, then the update
    assert sorted(r for mb in seen for r in mb) == sorted(list(range(step.size)) * 2)
    plain = H.training_worker(model_dir, None, dynamic=True)
    td = H.update_meta(
        H.v1_rows(step, ref["old"], ref["advantages"], None, order),
        mini_batch_size=step.size,
        influence=False,
    )
    plain.train_mini_batch(td)
    for (name, p), q in zip(worker.engine.module.named_parameters(), plain.engine.module.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6, msg=name)


def test_without_archer_fields_the_worker_refuses(model_dir, step):
    settings = H.influence_settings()
    ref = H.local_reference(model_dir, step, settings)
    worker = H.training_worker(model_dir, settings)
    td = H.update_meta(
        H.v1_rows(step, ref["old"], ref["advantages"], None, list(range(step.size))),
        mini_batch_size=step.size,
    )
    with pytest.raises(RuntimeError, match="archer_row"):
        worker.train_mini_batch(td)
