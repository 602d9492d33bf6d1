"""The local engine end to end on a very small model: files, determinism, resume, options."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from small_run import SMALL_PRESET, SMALL_RUN

from archer.core.config import compose
from archer.core.metrics import read_metrics
from archer.core.trace import TraceReader

SMALL = [
    *SMALL_RUN,
]


def small(tmp_path: Path, *extra: str, cache: Path | None = None) -> list[str]:
    return [*SMALL, f"trainer.cache_dir={cache or tmp_path / 'cache'}", *extra]


def run_local(tmp_path: Path, out: Path, *overrides: str, resume: bool = False, cache: Path | None = None):
    from archer.core.engines.local.trainer import LocalTrainer

    source = str(out / "config.yaml") if resume else SMALL_PRESET
    c = compose(source, small(tmp_path, *overrides, cache=cache))
    t = LocalTrainer(c, out, resume=resume)
    try:
        t.setup()
        result = t.fit()
    finally:
        t.close()
    return t, result


def test_run_writes_config_metrics_trace_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    t, result = run_local(tmp_path, out, "trainer.total_steps=3")
    assert (out / "config.yaml").exists() and json.loads((out / "run.json").read_text())[
        "preset"
    ] == SMALL_PRESET
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # 0 = validation before training
    step = rows[1]
    for key in (
        "reward/mean",
        "reward/accuracy",
        "rollout/entropy_mean",
        "actor/pg_clipfrac",
        "actor/kl",
        "time/rollout",
        "time/logprob",
        "time/update",
        "time/trace",
        "time/step",
    ):
        assert key in step, key
    assert "val/accuracy" in rows[0] and "val/accuracy" in rows[-1]
    reader = TraceReader(out)
    assert reader.steps() == [1, 2, 3]
    table = reader.read_step(2)
    assert table.num_rows == 16
    assert set(table.column("uid").to_pylist()) and table.column("influence").null_count == 16
    lengths = table.column("response_length").to_pylist()
    assert [len(e) for e in table.column("entropy").to_pylist()] == lengths
    assert reader.summary["tokenizer_path"].endswith("tokenizer")
    assert (out / "checkpoints" / "step_000003" / "trainer_state.pt").exists()
    assert (out / "warmup" / ".complete").exists()


def test_runs_are_reproducible_and_resume_matches_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    run_local(tmp_path, straight, "trainer.total_steps=4")
    again = tmp_path / "again"
    run_local(tmp_path, again, "trainer.total_steps=4")
    keys = ("reward/mean", "actor/pg_loss", "rollout/entropy_mean", "actor/grad_norm")
    a = [[r.get(k) for k in keys] for r in read_metrics(straight)]
    b = [[r.get(k) for k in keys] for r in read_metrics(again)]
    assert a == b
    split = tmp_path / "split"
    run_local(tmp_path, split, "trainer.total_steps=2", "trainer.save_every=1")
    run_local(tmp_path, split, "trainer.total_steps=4", resume=True)
    c = [[r.get(k) for k in keys] for r in read_metrics(split)]
    assert [r["step"] for r in read_metrics(split)] == [0, 1, 2, 3, 4]
    assert c == a
    assert TraceReader(split).steps() == [1, 2, 3, 4]
    info = json.loads((split / "run.json").read_text())
    assert len(info["resumes"]) == 1


def test_warmup_is_cached_across_runs(tmp_path):
    first, _ = run_local(tmp_path, tmp_path / "a", "trainer.total_steps=1", "trainer.val_before_train=false")
    second, _ = run_local(tmp_path, tmp_path / "b", "trainer.total_steps=1", "trainer.val_before_train=false")
    cached = list((tmp_path / "cache").glob("warmup-*"))
    assert len(cached) == 1
    a = (tmp_path / "a" / "warmup" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "warmup" / "model.safetensors").read_bytes()
    assert a == b


@pytest.mark.parametrize(
    "extra",
    [
        ["actor.use_kl_loss=true", "actor.kl_loss_type=low_var_kl", "actor.policy_loss=archer"],
        [
            "actor.policy_loss=aspo",
            "actor.ppo_epochs=2",
            "data.train_batch_size=8",
            "actor.ppo_mini_batch_size=4",
            "actor.ppo_micro_batch_size=3",
            "actor.entropy_coeff=0.01",
        ],
        [
            "algorithm.filter_groups.enable=true",
            "algorithm.filter_groups.max_num_gen_batches=3",
            "algorithm.overlong_buffer.enable=true",
            "algorithm.overlong_buffer.len=2",
            "algorithm.adv_estimator=rloo",
        ],
    ],
)
def test_algorithm_options_run(tmp_path, extra):
    out = tmp_path / "run"
    run_local(tmp_path, out, "trainer.total_steps=2", "trainer.val_before_train=false", *extra)
    rows = [r for r in read_metrics(out) if r["step"] > 0]
    assert len(rows) == 2 and all(r["reward/mean"] is not None for r in rows)
    if "actor.use_kl_loss=true" in extra:
        assert "actor/kl_loss" in rows[0]
    if "algorithm.filter_groups.enable=true" in extra:
        assert rows[0]["rollout/gen_rounds"] >= 1


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory) -> Path:
    """One warm-up cache for the influence cases: their 150-step warm-up is the same (5 CPU-s each)."""
    return tmp_path_factory.mktemp("influence-warmup-cache")


@pytest.mark.parametrize(
    "output_function,contrast,projection",
    [
        ("training_loss", "include", "rademacher"),
        ("log_prob_advantage", "include", "rademacher"),
        ("training_loss", "leave_one_out", "identity"),  # exact scores, own gradient left out
    ],
)
def test_influence_fills_the_trace(tmp_path, warm_cache, output_function, contrast, projection):
    out = tmp_path / "run"
    # a warm model and many samples so that some groups have both right and wrong answers
    run_local(
        tmp_path,
        out,
        "trainer.total_steps=2",
        "trainer.val_before_train=false",
        "warmup.steps=150",
        "warmup.lr=3e-3",
        "rollout.n=8",
        "data.train_batch_size=8",
        "actor.ppo_mini_batch_size=8",
        "actor.ppo_micro_batch_size=16",
        "influence.enable=true",
        f"influence.output_function={output_function}",
        "influence.projection_dim_factor=4",
        f"influence.contrast={contrast}",
        f"influence.projection={projection}",
        "influence.check_every=1",
        "influence.check_keep=1",
        cache=warm_cache,
    )
    # the state going into the last step's update is kept (check_keep=1 pruned the first)
    snaps = sorted(p.name for p in (out / "checkpoints" / "influence").iterdir())
    assert snaps == ["before_step_000002"]
    reader = TraceReader(out)
    assert reader.influence_contrast == contrast  # what the viewer and collect show
    traced = 0
    for step in reader.steps():
        t = reader.read_step(step)
        for i in range(t.num_rows):
            infl = t.column("influence")[i].as_py()
            acc = t.column("accepted")[i].as_py()
            if infl is None:
                continue
            traced += 1
            assert acc is not None
            assert len(infl) == t.column("response_length")[i].as_py()
            assert t.column("influence_mean")[i].as_py() is not None
    rows = [r for r in read_metrics(out) if r["step"] > 0]
    assert traced == sum(r["influence/rows_emitted"] for r in rows)
    assert traced > 0, "no mixed group in two steps: the fixture needs a warmer model"
    if output_function == "training_loss" and contrast == "include":  # step 2 has traced groups (seed 0)
        # the replay of step 2 from its snapshot and its traced batch reproduces the update
        from archer.core.engines.local.influence_check import CheckOptions, check_step

        r = check_step(out, 2, CheckOptions(q=50, draws=1, max_groups=1, bootstrap=10))
        assert r.replay_entropy_err < 5e-3 and r.sets == 4
        assert all(math.isfinite(x["measured"]) for x in r.set_rows)


def test_kill_at_random_moments_then_resume(tmp_path):
    """SIGKILL a training process at random moments while it trains and writes its trace: the
    reader sees whole steps only, the manifest names no missing file, and --resume continues
    from the last checkpoint without duplicate steps."""
    rng = random.Random(0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    total = 24
    args = small(
        tmp_path, f"trainer.total_steps={total}", "trainer.save_every=3", "trainer.val_before_train=false"
    )
    out = tmp_path / "run"
    run_local(
        tmp_path, tmp_path / "warm", "trainer.total_steps=1", "trainer.val_before_train=false"
    )  # warm the cache
    cmd = [sys.executable, "-m", "archer", "train", "--preset", SMALL_PRESET, "--out", str(out), *args]
    for _trial in range(3):
        resume = ["--resume"] if (out / "config.yaml").exists() else []
        target = rng.randint(2, total - 2)
        proc = subprocess.Popen(
            cmd + resume, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
        )
        for line in proc.stdout:
            if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= target:
                time.sleep(rng.uniform(0.0, 0.05))
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader = TraceReader(out)
        for step in reader.steps():
            assert reader.read_step(step).num_rows == 16
        assert all((out / "trace" / e["file"]).exists() for e in reader.manifest())
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert TraceReader(out).steps() == list(range(1, total + 1))
    assert [m["step"] for m in read_metrics(out)] == list(range(1, total + 1))


def test_tensorboard_sink_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    out = tmp_path / "run"
    run_local(
        tmp_path,
        out,
        "trainer.total_steps=1",
        "trainer.val_before_train=false",
        "trainer.logging.tensorboard=true",
    )
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_cli_refuses_to_start_over_an_existing_run(tmp_path):
    out = tmp_path / "run"
    run_local(tmp_path, out, "trainer.total_steps=1", "trainer.val_before_train=false")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "archer",
            "train",
            "--preset",
            SMALL_PRESET,
            "--out",
            str(out),
            *small(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "already holds a run" in r.stderr and "--resume" in r.stderr
