"""`archer export`: a local-engine checkpoint round-trips exactly; a genuine verl FSDP checkpoint
(FSDP2 `fully_shard` on two gloo CPU ranks, saved by verl's own `FSDPCheckpointManager`) is merged
by verl's model merger and checked; what the check catches; what is refused."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
import torch
from small_run import SMALL_PRESET, SMALL_RUN
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.config import compose
from archer.core.export.checkpoints import find_checkpoint

runner = CliRunner()

SMALL = [
    *SMALL_RUN,
    "warmup.steps=150",
    "warmup.lr=3e-3",
    "trainer.val_before_train=false",
    "trainer.total_steps=2",
    "trainer.save_every=1",
]


def load(path: Path, dtype=None):
    from transformers import AutoModelForCausalLM

    kw = {"dtype": dtype} if dtype is not None else {}
    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **kw).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


PROBE = torch.tensor([[10, 20, 11, 30, 5, 22, 40, 41], [60, 12, 13, 14, 7, 8, 9, 90]])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A quickstart run with checkpoints at steps 1 and 2 (warm enough that GRPO moves the weights)."""
    from archer.core.engines.local.trainer import LocalTrainer

    tmp = tmp_path_factory.mktemp("export")
    out = tmp / "run"
    t = LocalTrainer(compose(SMALL_PRESET, [*SMALL, f"trainer.cache_dir={tmp / 'cache'}"]), out)
    try:
        t.setup()
        t.fit()
    finally:
        t.close()
    return out


# --------------------------------------------------------------------------- local engine


def test_local_checkpoint_round_trips_exactly(run_dir, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "hf"
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "check passed" in r.stdout and "tolerance 0" in r.stdout
    ckpt = run_dir / "checkpoints" / "step_000002"
    assert not (out / "trainer_state.pt").exists() and (out / "config.json").exists()
    record = json.loads((out / "archer_export.json").read_text())
    assert record["kind"] == "local" and record["step"] == 2 and record["check"]["passed"]
    assert record["check"]["max_abs_logit_diff"] == 0.0 and record["check"]["dtype"] == "float32"

    src, exp = load(ckpt), load(out)
    a, b = src.state_dict(), exp.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert torch.equal(logits(src, PROBE), logits(exp, PROBE))
    assert exp.generation_config.eos_token_id == src.generation_config.eos_token_id
    t_src = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    t_exp = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    text = "12+34=46\n"
    assert t_exp(text)["input_ids"] == t_src(text)["input_ids"] and t_exp.eos_token == t_src.eos_token

    # an exported folder is what `archer eval --model` takes
    r = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(out),
            "--data",
            str(run_dir / "data" / "val.parquet"),
            "--reward",
            "arithmetic",
            "--n",
            "2",
            "--max-new-tokens",
            "3",
            "--limit",
            "4",
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert r.exit_code == 0, r.output


def test_step_selection(run_dir, tmp_path):
    r = runner.invoke(app, ["export", str(run_dir), "--step", "1", "--out", str(tmp_path / "s1")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s1" / "archer_export.json").read_text())["step"] == 1
    one, two = load(tmp_path / "s1").state_dict(), load(run_dir / "checkpoints" / "step_000002").state_dict()
    first = load(run_dir / "checkpoints" / "step_000001").state_dict()
    assert all(torch.equal(one[k], first[k]) for k in one)
    assert not all(torch.equal(one[k], two[k]) for k in one)  # training moved the weights
    r = runner.invoke(app, ["export", str(run_dir), "--step", "9", "--out", str(tmp_path / "s9")])
    assert r.exit_code == 2 and "no local checkpoint for step 9" in r.stderr and "1, 2" in r.stderr
    # a single checkpoint folder exports too
    r = runner.invoke(
        app, ["export", str(run_dir / "checkpoints" / "step_000001"), "--out", str(tmp_path / "c1")]
    )
    assert r.exit_code == 0, r.output


def test_output_folder_rules(run_dir, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert r.exit_code == 2 and "not empty" in r.stderr and "--force" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--force"])
    assert r.exit_code == 0, r.output
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    for bad in (run_dir, run_dir / "checkpoints", run_dir / "checkpoints" / "step_000002" / "x"):
        r = runner.invoke(app, ["export", str(run_dir), "--out", str(bad), "--force"])
        assert r.exit_code == 2, (bad, r.output)
    assert (run_dir / "checkpoints" / "step_000002" / "trainer_state.pt").exists()
    r = runner.invoke(app, ["export", str(out), "--out", str(tmp_path / "again")])
    assert r.exit_code == 2 and "already a Hugging Face model folder" in r.stderr
    r = runner.invoke(app, ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not found" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["export", str(empty), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "holds no checkpoint" in r.stderr


def test_a_wrong_export_is_caught_and_not_installed(run_dir, tmp_path, monkeypatch):
    from archer.core.export import exporter

    real = exporter._export_local

    def off_by_a_bit(ckpt, tmp, tok_dir, trust_remote_code):
        real(ckpt, tmp, tok_dir, trust_remote_code)
        from safetensors.torch import load_file, save_file

        weights = load_file(str(tmp / "model.safetensors"))
        key = next(k for k in weights if k.endswith("down_proj.weight"))
        weights[key][0, 0] += 1e-3
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})

    monkeypatch.setattr(exporter, "_export_local", off_by_a_bit)
    out = tmp_path / "hf"
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert r.exit_code == 1
    assert "does not match the checkpoint" in r.stderr and "down_proj.weight" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".hf.export-tmp-*"))
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--no-check"])
    assert r.exit_code == 0 and "not checked" in r.stdout


def test_compare_detects_a_changed_config(run_dir):
    """Same weights but a different config (rope base) must fail on the logits."""
    from archer.core.export.check import compare

    ck = run_dir / "checkpoints" / "step_000002"
    ref = load(ck)
    other = load(ck)
    assert compare(ref, other, PROBE).passed
    other.config.rope_parameters["rope_theta"] = 500.0
    other.model.rotary_emb.__init__(other.config)
    res = compare(ref, other, PROBE)
    assert not res.passed and not res.weight_mismatches and res.max_abs_logit_diff > 0


# --------------------------------------------------------------------------- verl FSDP

needs_verl = pytest.mark.skipif(importlib.util.find_spec("verl") is None, reason="needs the verl extra")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank: int, world: int, port: int, hf_dir: str, ckpt_dir: str, ref_path: str) -> None:
    """One rank: load the HF model as verl does, shard it with FSDP2, take an optimizer step,
    save with verl's FSDPCheckpointManager; rank 0 keeps torch's own full_tensor() of every weight."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(hf_dir)
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(input_ids=PROBE).logits.float().pow(2).mean().backward()
        opt.step()
        from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

        manager = FSDPCheckpointManager(
            model=model,
            optimizer=opt,
            lr_scheduler=None,
            processing_class=tok,
            checkpoint_config={"save_contents": ["model", "optimizer", "extra"]},
        )
        manager.save_checkpoint(ckpt_dir, global_step=3)
        full = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()
        }
        if rank == 0:
            torch.save(full, ref_path)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def verl_run(tmp_path_factory) -> tuple[Path, Path]:
    """<run>/global_step_3/actor/ from two FSDP2 ranks, and the tracker file verl's trainer writes."""
    from types import SimpleNamespace

    import torch.multiprocessing as mp

    from archer.core.models.tiny import build_char_tokenizer, build_tiny_qwen2

    tmp = tmp_path_factory.mktemp("verl")
    tok = build_char_tokenizer()
    cfg = SimpleNamespace(
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    # odd vocab: the embedding rows do not split evenly over two ranks
    model = build_tiny_qwen2(
        cfg, len(tok) + 1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, seed=1
    )
    hf = tmp / "base"
    model.save_pretrained(hf)
    tok.save_pretrained(hf)
    run = tmp / "vrun"
    mp.spawn(
        _fsdp_worker,
        args=(2, _free_port(), str(hf), str(run / "global_step_3" / "actor"), str(tmp / "full.pt")),
        nprocs=2,
        join=True,
    )
    (run / "latest_checkpointed_iteration.txt").write_text("3")
    return run, tmp / "full.pt"


@needs_verl
def test_verl_fsdp_checkpoint_is_detected(verl_run):
    run, _ = verl_run
    actor = run / "global_step_3" / "actor"
    assert sorted(p.name for p in actor.glob("model_world_size_*")) == [
        "model_world_size_2_rank_0.pt",
        "model_world_size_2_rank_1.pt",
    ]
    for path in (run, run / "global_step_3", actor):
        c = find_checkpoint(path)
        assert (c.kind, c.path, c.step) == ("verl", actor, 3), path


@needs_verl
def test_verl_fsdp_checkpoint_exports_through_verls_merger(verl_run, tmp_path):
    run, full_path = verl_run
    out = tmp_path / "hf"
    r = runner.invoke(app, ["export", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "verl FSDP checkpoint" in r.stdout and "check passed" in r.stdout
    record = json.loads((out / "archer_export.json").read_text())
    assert record["merger"] == "verl.model_merger (fsdp)" and record["step"] == 3
    check = record["check"]
    assert check["passed"] and check["dtype"] == "bfloat16" and check["max_abs_logit_diff"] == 0.0
    assert 0 < check["fp32_max_abs_logit_diff"] < 0.1  # bf16 rounding, reported

    # against torch's own gathering of the sharded weights, not archer's
    full = torch.load(full_path, weights_only=False)
    exp = load(out)
    sd = exp.state_dict()
    assert exp.config.tie_word_embeddings and next(exp.parameters()).dtype == torch.bfloat16
    for k, v in full.items():
        assert torch.equal(sd[k], v.to(torch.bfloat16)), k
    base = load(full_path.parent / "base", dtype=torch.bfloat16)
    assert not torch.equal(
        base.state_dict()["model.embed_tokens.weight"], full["model.embed_tokens.weight"].to(torch.bfloat16)
    )  # the step moved the weights
    # the trained weights rounded to bf16 in the original model: bitwise-equal logits
    base.load_state_dict({k: v.to(torch.bfloat16) for k, v in full.items()})
    assert torch.equal(logits(exp, PROBE), logits(base, PROBE))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out), local_files_only=True)("7+8=")["input_ids"] == [
        27,
        15,
        28,
        33,
    ]


@needs_verl
def test_verl_checkpoint_missing_a_shard_is_refused_before_merging(verl_run, tmp_path):
    import shutil

    run, _ = verl_run
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "global_step_3" / "actor" / "model_world_size_2_rank_1.pt").unlink()
    r = runner.invoke(app, ["export", str(broken), "--out", str(tmp_path / "hf")])
    assert r.exit_code == 1 and "model_world_size_2_rank_1.pt" in r.stderr and "incomplete" in r.stderr
    r = runner.invoke(app, ["export", str(run), "--step", "4", "--out", str(tmp_path / "hf")])
    assert r.exit_code == 2 and "steps available: 3" in r.stderr
