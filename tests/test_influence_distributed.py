"""Prompt groups split across two data-parallel ranks (gloo, two CPU processes) score exactly as
on one rank: the per-response data is gathered, not dropped."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from influence_fixtures import make_batch, settings, tiny_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scores(batch, s, rows, comm=None):
    from test_influence import run_logprob_capture

    from archer.influence.tracer import InfluenceTracer

    model = tiny_model()
    tracer = InfluenceTracer(model, s, identity_projection=True, comm=comm)
    metas = [m for m in batch.metas("log_prob") if m.row in rows]
    tracer.begin_step(metas, {r: len(batch.responses[r]) for r in rows})
    run_logprob_capture(model, batch, tracer, rows=rows)
    per_row, metrics = tracer.finish_step()
    return {r: v.tolist() for r, v in per_row.items()}, metrics


CONFIGS = [
    ("inverse", "response", "per_prompt", "include"),
    ("inverse", "token", "per_prompt", "include"),
    ("identity", "response", "all_selected", "include"),
    ("inverse", "response", "all_selected", "leave_one_out"),
    ("inverse", "token", "per_prompt", "leave_one_out"),
]


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from archer.influence.distributed import ProcessGroupComm

        batch = make_batch(seed=11)
        # interleave rows so that every group has responses on both ranks
        rows = [r for r in batch.rows if r % 2 == rank]
        for mode, source, scope, contrast in CONFIGS:
            s = settings(
                hessian_mode=mode, hessian_source=source, accepted_rejected_scope=scope, contrast=contrast
            )
            out[(rank, mode, source, scope, contrast)] = _scores(batch, s, rows, comm=ProcessGroupComm())
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_rank():
    batch = make_batch(seed=11)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        results = dict(out)
    for mode, source, scope, contrast in CONFIGS:
        s = settings(
            hessian_mode=mode, hessian_source=source, accepted_rejected_scope=scope, contrast=contrast
        )
        single, _ = _scores(batch, s, batch.rows)
        merged = {}
        for rank in (0, 1):
            per_row, metrics = results[(rank, mode, source, scope, contrast)]
            assert metrics["influence/groups_skipped_all_same"] == 2
            merged.update(per_row)
        assert sorted(merged) == sorted(single)
        for r in single:
            a, b = torch.tensor(single[r], dtype=torch.float64), torch.tensor(merged[r], dtype=torch.float64)
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True), (
                mode,
                source,
                scope,
                contrast,
                r,
            )
        # and the split really matters: one rank alone sees incomplete groups and scores differently
        lonely, _ = _scores(batch, s, [r for r in batch.rows if r % 2 == 0])
        assert any(
            not torch.allclose(torch.tensor(lonely[r]), torch.tensor(single[r]), equal_nan=True)
            for r in lonely
        )


def test_fsdp2_wrapped_model_captures_the_same_factors():
    """fully_shard keeps module names and leaf Linears: capture is identical to the plain model."""
    from influence_fixtures import capture_positions, pad_rows, padded_logprob_terms
    from torch.distributed.fsdp import fully_shard

    from archer.influence.capture import InfluenceRecorder

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        batch = make_batch()
        captured = []
        for wrap in (False, True):
            model = tiny_model()
            if wrap:
                for layer in model.model.layers:
                    fully_shard(layer)
                fully_shard(model)
            rec = InfluenceRecorder(model, settings(), identity_projection=True)
            pb = pad_rows(batch, batch.rows)
            pos, rid, tok = capture_positions(batch, batch.rows, pb)
            rec.begin_micro(pos, rid, tok)
            logp, mask, _ = padded_logprob_terms(model, batch, batch.rows)
            (logp * mask).sum().backward()
            rec.end_micro()
            captured.append((rec.names, rec.captured()))
        assert captured[0][0] == captured[1][0]
        for a, b in zip(captured[0][1].modules, captured[1][1].modules):
            assert torch.allclose(a.u, b.u, atol=1e-12) and torch.allclose(a.v, b.v, atol=1e-12)
    finally:
        dist.destroy_process_group()
