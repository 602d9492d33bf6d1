"""`archer eval`: the pass@k estimator, sampling + grading end to end on a quickstart-trained tiny
model, resume after an interruption, --regrade, and the vllm engine's refusal without vLLM."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from small_run import SMALL_PRESET, SMALL_RUN
from typer.testing import CliRunner

from archer.cli.main import app
from archer.core.config import compose
from archer.core.evaluation import default_ks, parse_ks, pass_at_k
from archer.core.evaluation.results import summarize
from archer.errors import UsageError

runner = CliRunner()

# the local engine's test model (tests/test_local_engine.py::SMALL), warmed up enough that it
# answers some single-digit sums right and some wrong
SMALL = [
    *SMALL_RUN,
    "warmup.steps=150",
    "warmup.lr=3e-3",
    "trainer.total_steps=2",
    "trainer.val_before_train=false",
]


# --------------------------------------------------------------------------- the estimator


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The share of k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(1 for s in subsets if any(i < c for i in s))
    return Fraction(hits, len(subsets))


def test_pass_at_k_equals_enumeration_over_all_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(
                    float(brute_force_pass_at_k(n, c, k)), abs=1e-12
                ), (n, c, k)


def test_pass_at_k_edge_cases():
    assert pass_at_k(8, 0, 1) == 0.0 and pass_at_k(8, 0, 8) == 0.0  # nothing right
    assert pass_at_k(8, 8, 1) == 1.0 and pass_at_k(8, 8, 5) == 1.0  # everything right
    assert pass_at_k(8, 1, 8) == 1.0 and pass_at_k(8, 3, 8) == 1.0  # k = n: any correct sample
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # pass@1 = c/n = avg@n
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


@pytest.mark.parametrize(
    "n,c,k", [(1024, 1, 1), (512, 3, 256), (300, 150, 150), (1000, 999, 2), (2000, 7, 1000)]
)
def test_pass_at_k_is_stable_where_binomials_overflow(n, c, k):
    # C(2000, 1000) has 600 digits: as floats the binomials overflow; the product form does not
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_k_values():
    assert default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]
    assert parse_ks("16, 1,4,4", 16) == [1, 4, 16]
    with pytest.raises(UsageError, match="needs at least 32 samples"):
        parse_ks("1,32", 16)
    with pytest.raises(UsageError):
        parse_ks("1,x", 16)
    with pytest.raises(UsageError):
        parse_ks("0", 16)


def test_summary_per_source_and_overall():
    # source a: problem 0 has 1/4 right, problem 1 has 4/4; source b: problem 2 has 0/4
    correct = {0: [1, 0, 0, 0], 1: [1, 1, 1, 1], 2: [0, 0, 0, 0]}
    rows = [
        {
            "problem": p,
            "data_source": "a" if p < 2 else "b",
            "correct": bool(x),
            "reward": float(x),
            "response_length": 3 + p,
            "truncated": p == 2,
        }
        for p, xs in correct.items()
        for x in xs
    ]
    s = summarize(rows, n=4, ks=[1, 2, 4])
    assert list(s) == ["a", "b", "all"]
    assert s["a"]["problems"] == 2 and s["a"]["samples"] == 8 and s["a"]["correct"] == 5
    assert s["a"]["avg@4"] == pytest.approx((0.25 + 1.0) / 2)
    assert s["a"]["pass@2"] == pytest.approx((0.5 + 1.0) / 2)  # 1 - C(3,2)/C(4,2) = 0.5
    assert s["a"]["pass@4"] == 1.0 and s["b"]["pass@4"] == 0.0
    assert s["all"]["avg@4"] == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    assert s["all"]["pass@1"] == pytest.approx(s["all"]["avg@4"])
    assert s["all"]["truncated_frac"] == pytest.approx(1 / 3)
    assert s["b"]["response_length_mean"] == 5.0
    assert s["all"]["avg_stderr"] == pytest.approx(
        math.sqrt(sum((a - 1.25 / 3) ** 2 for a in (0.25, 1.0, 0.0)) / 2) / math.sqrt(3)
    )


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A quickstart run of two GRPO steps on the small model, with its final checkpoint."""
    from archer.core.engines.local.trainer import LocalTrainer

    tmp = tmp_path_factory.mktemp("eval")
    out = tmp / "run"
    t = LocalTrainer(compose(SMALL_PRESET, [*SMALL, f"trainer.cache_dir={tmp / 'cache'}"]), out)
    try:
        t.setup()
        t.fit()
    finally:
        t.close()
    assert (out / "checkpoints" / "step_000002" / "trainer_state.pt").exists()
    return out


def eval_args(run: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--model",
        str(run),
        "--n",
        "6",
        "--batch-size",
        "5",
        "--k",
        "1,2,6",
        "--out",
        str(out),
        *extra,
    ]


def invoke(args: list[str]):
    return runner.invoke(app, args)


def read_samples(out: Path):
    return pq.read_table(out / "samples").sort_by([("problem", "ascending"), ("sample", "ascending")])


def expected_from_samples(table, n: int, ks: list[int]) -> dict:
    """The metrics recomputed from the saved rows with exact binomials, independent of archer's code."""
    by_source: dict[str, list[int]] = {}
    per_problem: dict[int, list] = {}
    for r in table.to_pylist():
        per_problem.setdefault(r["problem"], [r["data_source"], 0, 0])
        per_problem[r["problem"]][1] += 1
        per_problem[r["problem"]][2] += int(r["correct"])
    for src, m, c in per_problem.values():
        assert m == n
        by_source.setdefault(src, []).append(c)
        by_source.setdefault("all", []).append(c)
    out = {}
    for src, cs in by_source.items():
        out[src] = {f"avg@{n}": sum(c / n for c in cs) / len(cs)}
        for k in ks:
            out[src][f"pass@{k}"] = sum(1 - math.comb(n - c, k) / math.comb(n, k) for c in cs) / len(cs)
    return out


@pytest.fixture(scope="module")
def evaluated(run_dir, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("evalout") / "ev"
    r = invoke(eval_args(run_dir, out))
    assert r.exit_code == 0, r.output
    return out, r


def test_eval_end_to_end_table_matches_the_saved_samples(run_dir, evaluated):
    from archer.core.export.checkpoints import load_tokenizer
    from archer.core.rewards.arithmetic import score_arithmetic

    out, r = evaluated
    spec = json.loads((out / "eval.json").read_text())
    # defaults came from the run: its validation data, reward and response length
    assert spec["data"] == [str((run_dir / "data" / "val.parquet").resolve())]
    assert spec["reward"] == "arithmetic" and spec["max_new_tokens"] == 4
    assert spec["model"].endswith("step_000002") and spec["checkpoint"]["step"] == 2
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "shard-0000000.parquet",
        "shard-0000005.parquet",
        "shard-0000010.parquet",
        "shard-0000015.parquet",
    ]

    table = read_samples(out)
    assert table.num_rows == 16 * 6
    rows = table.to_pylist()
    assert [(x["problem"], x["sample"]) for x in rows] == [(p, s) for p in range(16) for s in range(6)]
    tok = load_tokenizer(run_dir / "checkpoints" / "step_000002")
    for x in rows:
        assert x["response_length"] == len(x["response_ids"]) >= 1
        assert tok.decode(x["response_ids"], skip_special_tokens=True) == x["response"]
        assert score_arithmetic(x["response"], x["answer"]).correct == x["correct"]
        assert x["reward"] == (1.0 if x["correct"] else 0.0) and x["reward_fn"] == "arithmetic"
        assert x["prompt"].endswith("=") and x["data_source"] == "arithmetic"
    n_correct = sum(x["correct"] for x in rows)
    assert 0 < n_correct < len(rows), "the fixture model should be right sometimes and wrong sometimes"

    results = json.loads((out / "results.json").read_text())
    want = expected_from_samples(table, 6, [1, 2, 6])
    assert results["complete"] and results["problems"] == results["problems_sampled"] == 16
    assert results["ks"] == [1, 2, 6]
    for key, value in want["all"].items():
        assert results["overall"][key] == pytest.approx(value, abs=1e-6), key
    for key, value in want["arithmetic"].items():
        assert results["by_data_source"]["arithmetic"][key] == pytest.approx(value, abs=1e-6), key
    assert results["overall"]["correct"] == n_correct
    # the printed table shows the same numbers (in %)
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("all"))
    cells = line.split()
    assert cells[1] == "16"
    assert cells[2] == f"{100 * want['all']['avg@6']:.1f}"
    assert cells[4:7] == [f"{100 * want['all'][f'pass@{k}']:.1f}" for k in (1, 2, 6)]
    assert "avg@6" in r.stdout and "pass@6" in r.stdout


def test_greedy_eval_reproduces_the_runs_final_validation(run_dir, tmp_path):
    """The run validated greedily (rollout.val: n=1, temperature 0) on the same 16 problems."""
    from archer.core.metrics import read_metrics

    last = [m for m in read_metrics(run_dir) if "val/accuracy" in m][-1]
    r = invoke(
        ["eval", "--model", str(run_dir), "--n", "1", "--temperature", "0", "--out", str(tmp_path / "g")]
    )
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "g" / "results.json").read_text())["overall"]
    assert res["avg@1"] == pytest.approx(last["val/accuracy"], abs=1e-6)
    assert res["response_length_mean"] == pytest.approx(last["val/response_length"], abs=1e-6)


def test_rerun_resumes_and_samples_only_what_is_missing(run_dir, evaluated, tmp_path, monkeypatch):
    from archer.core.evaluation import samplers

    out, _ = evaluated
    copy = tmp_path / "ev"
    shutil.copytree(out, copy)
    shards = copy / "samples"
    original = [p.name for p in shards.iterdir()]
    kept = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    for name in ("shard-0000005.parquet", "shard-0000015.parquet"):  # a middle batch and the last one
        (shards / name).unlink()
        kept.pop(name)
    (shards / ".shard-0000015.parquet.tmp-999").write_bytes(b"half a file")  # what a killed write leaves

    seen: list[int] = []
    real = samplers.LocalSampler.sample

    def counting(self, prompts, **kw):
        seen.append(len(prompts))
        return real(self, prompts, **kw)

    monkeypatch.setattr(samplers.LocalSampler, "sample", counting)
    r = invoke(eval_args(run_dir, copy))
    assert r.exit_code == 0, r.output
    assert seen == [5, 1]  # problems 5..9 and 15, nothing else
    assert "resuming: 10 of 16" in r.stderr
    assert not (shards / ".shard-0000015.parquet.tmp-999").exists()
    for name, mtime in kept.items():
        assert (shards / name).stat().st_mtime_ns == mtime  # finished shards are not rewritten
    # each batch draws from its own seed, so the redrawn batches equal the first run's
    assert sorted(p.name for p in shards.iterdir()) == sorted(original)
    assert read_samples(copy).equals(read_samples(out))
    assert (
        json.loads((copy / "results.json").read_text())["overall"]
        == json.loads((out / "results.json").read_text())["overall"]
    )

    # a second run of the same command samples nothing and reports the same numbers
    seen.clear()
    r = invoke(eval_args(run_dir, copy))
    assert r.exit_code == 0 and seen == [] and "already sampled" in r.stderr


def test_interrupted_run_keeps_finished_batches(run_dir, tmp_path, monkeypatch):
    from archer.core.evaluation import samplers

    real = samplers.LocalSampler.sample
    calls = {"n": 0}

    def stop_on_third(self, prompts, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, prompts, **kw)

    monkeypatch.setattr(samplers.LocalSampler, "sample", stop_on_third)
    out = tmp_path / "ev"
    r = invoke(eval_args(run_dir, out, "--limit", "12"))
    assert r.exit_code == 1
    assert "interrupted after 10 of 12 problems" in r.stderr and "run the same command again" in r.stderr
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "shard-0000000.parquet",
        "shard-0000005.parquet",
    ]
    assert not (out / "results.json").exists()
    monkeypatch.setattr(samplers.LocalSampler, "sample", real)
    r = invoke(eval_args(run_dir, out, "--limit", "12"))
    assert r.exit_code == 0, r.output
    assert read_samples(out).num_rows == 12 * 6
    assert json.loads((out / "results.json").read_text())["problems_sampled"] == 12


def test_regrade_reproduces_and_repairs_the_results(run_dir, evaluated, tmp_path):
    import pyarrow as pa

    out, _ = evaluated
    copy = tmp_path / "ev"
    shutil.copytree(out, copy)
    before = json.loads((out / "results.json").read_text())
    # spoil the grades of one shard: a regrade must recompute them from the responses
    path = copy / "samples" / "shard-0000000.parquet"
    t = pq.read_table(path)
    t = t.set_column(t.schema.get_field_index("correct"), "correct", pa.array([True] * t.num_rows))
    pq.write_table(t, path)
    r = invoke(["eval", "--regrade", str(copy)])
    assert r.exit_code == 0, r.output
    after = json.loads((copy / "results.json").read_text())
    assert after["overall"] == before["overall"] and after["by_data_source"] == before["by_data_source"]
    assert read_samples(copy).equals(read_samples(out))

    # another reward function: recorded in the samples, eval.json and results.json
    r = invoke(["eval", "--regrade", str(copy), "--reward", "math", "--k", "1,6"])
    assert r.exit_code == 0, r.output
    res = json.loads((copy / "results.json").read_text())
    assert res["reward"] == "math" and res["graded_with"] == ["math"] and res["ks"] == [1, 6]
    assert set(read_samples(copy).column("reward_fn").to_pylist()) == {"math"}
    # sampling again into it with the old reward is refused, with the way out
    r = invoke(eval_args(run_dir, copy))
    assert r.exit_code == 2 and "--regrade" in r.stderr


def test_other_settings_are_refused_unless_overwritten(run_dir, evaluated, tmp_path):
    out, _ = evaluated
    copy = tmp_path / "ev"
    shutil.copytree(out, copy)
    r = invoke(["eval", "--model", str(run_dir), "--n", "4", "--out", str(copy)])
    assert r.exit_code == 2 and "n: 6 -> 4" in r.stderr and "--overwrite" in r.stderr
    r = invoke(
        [
            "eval",
            "--model",
            str(run_dir),
            "--n",
            "2",
            "--temperature",
            "0",
            "--limit",
            "3",
            "--out",
            str(copy),
            "--overwrite",
        ]
    )
    assert r.exit_code == 0, r.output
    assert "greedy" in r.stderr
    t = read_samples(copy)
    assert t.num_rows == 6
    rows = t.to_pylist()
    assert all(rows[i]["response"] == rows[i + 1]["response"] for i in range(0, 6, 2))  # greedy: same twice


def test_user_errors(run_dir, tmp_path):
    r = invoke(["eval", "--data", "x.parquet"])
    assert r.exit_code == 2 and "missing --model" in r.stderr
    r = invoke(["eval", "--model", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not found" in r.stderr
    r = invoke(["eval", "--model", str(run_dir), "--n", "4", "--k", "8", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "pass@8 needs at least 8 samples" in r.stderr
    r = invoke(["eval", "--regrade", str(tmp_path), "--model", str(run_dir)])
    assert r.exit_code == 2 and "--model" in r.stderr
    r = invoke(["eval", "--regrade", str(tmp_path)])
    assert r.exit_code == 2 and "no evaluation" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    r = invoke(["eval", "--model", str(run_dir), "--out", str(tmp_path / "full")])
    assert r.exit_code == 2 and "not empty" in r.stderr
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    verl = tmp_path / "vrun" / "global_step_5" / "actor"
    verl.mkdir(parents=True)
    (verl / "fsdp_config.json").write_text('{"FSDP_version": 2, "world_size": 1}')
    r = invoke(["eval", "--model", str(tmp_path / "vrun")])
    assert r.exit_code == 2 and "archer export" in r.stderr


def test_vllm_engine_refuses_clearly_without_vllm(run_dir, tmp_path):
    from archer.core.evaluation.samplers import vllm_installed

    if vllm_installed():
        pytest.skip("vLLM is installed here; the refusal is for machines without it")
    r = invoke(["eval", "--model", str(run_dir), "--engine", "vllm", "--out", str(tmp_path / "v")])
    assert r.exit_code == 1
    assert "'vllm' extra is not installed" in r.stderr and "pip install 'archer[vllm]'" in r.stderr
    assert "--engine local" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "v").exists()  # refused before anything was written


def test_training_validation_uses_the_same_estimator(run_dir):
    """The local engine's validation and `archer eval` share sampling, grading and metrics."""
    import torch

    from archer.core.engines.local.evaluation import evaluate
    from archer.core.evaluation import samplers
    from archer.core.export.checkpoints import load_model, load_tokenizer
    from archer.core.rollout.prompts import Prompt

    ck = run_dir / "checkpoints" / "step_000002"
    model, tok = load_model(ck), load_tokenizer(ck)
    prompts = [
        Prompt(
            ids=tok(f"{a}+{b}=", add_special_tokens=False)["input_ids"],
            answer=str(a + b),
            data_source="arithmetic",
            index=i,
        )
        for i, (a, b) in enumerate([(1, 2), (3, 4), (5, 4), (2, 2)])
    ]
    torch.manual_seed(0)
    m = evaluate(
        model,
        tok,
        prompts,
        reward_fn="arithmetic",
        n=4,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=4,
        timeout_s=5.0,
    )
    torch.manual_seed(0)
    graded = samplers.LocalSampler(model, tok).sample(
        [p.ids for p in prompts], n=4, temperature=1.0, top_p=1.0, max_new_tokens=4
    )
    from archer.core.rewards.arithmetic import score_arithmetic

    counts = [sum(score_arithmetic(c.text, p.answer).correct for c in cs) for p, cs in zip(prompts, graded)]
    assert m["val/accuracy"] == pytest.approx(sum(counts) / 16)
    assert m["val/pass@4"] == pytest.approx(sum(c > 0 for c in counts) / 4)
    assert m["val/prompts"] == 4.0


def test_vllm_glue_with_a_stand_in_engine(run_dir, tmp_path, monkeypatch):
    """Not a test of vLLM (not installed here): a stand-in `vllm` module with its offline API's
    shape checks what archer asks of it and how it maps the outputs into samples."""
    import importlib.machinery
    import sys
    import types

    made: list = []

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            self.kw = kw
            made.append(self)

        def generate(self, requests, params, use_tqdm=True):
            self.calls = getattr(self, "calls", []) + [(requests, params)]
            out = []
            for _req, p in zip(requests, params):
                comps = [types.SimpleNamespace(text="7", token_ids=[27, 1], finish_reason="stop")] * (p.n - 1)
                comps.append(types.SimpleNamespace(text="77777", token_ids=[27] * 5, finish_reason="length"))
                out.append(types.SimpleNamespace(outputs=comps))
            return out

    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)

    out = tmp_path / "v"
    r = invoke(
        [
            "eval",
            "--model",
            str(run_dir),
            "--engine",
            "vllm",
            "--n",
            "3",
            "--batch-size",
            "4",
            "--limit",
            "6",
            "--seed",
            "2",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    (llm,) = made
    assert llm.kw["model"].endswith("step_000002") and llm.kw["seed"] == 2 and llm.kw["max_model_len"] <= 64
    seeds = [p.seed for requests, params in llm.calls for p in params]
    assert seeds == [2 * 1_000_003 + pid for pid in range(6)]  # one seed per problem, whatever the batching
    assert all(p.n == 3 and p.max_tokens == 4 and p.temperature == 1.0 for _, ps in llm.calls for p in ps)
    assert [len(requests) for requests, _ in llm.calls] == [4, 2]
    t = read_samples(out).to_pylist()
    assert len(t) == 18
    assert [x["truncated"] for x in t[:3]] == [False, False, True] and t[0]["response_ids"] == [27, 1]
    for x in t:
        assert x["correct"] == (x["sample"] < 2 and x["answer"] == "7")
    assert json.loads((out / "results.json").read_text())["overall"]["truncated_frac"] == pytest.approx(1 / 3)


def documented_eval_commands() -> list[list[str]]:
    """The `archer eval --model runs/qs ...` lines of docs/eval-export.md's first example, in order."""
    import shlex

    doc = (Path(__file__).resolve().parents[1] / "docs" / "eval-export.md").read_text()
    block = doc.split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln.split("#", 1)[0].strip() for ln in block.splitlines()]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith("archer eval --model runs/qs")]


def test_documented_eval_sequence_runs_in_order_with_default_folders(run_dir, tmp_path):
    """The docs' commands, one after the other, without --out: each draws different samples, so
    each gets its own default folder (named after n and temperature); running one again resumes."""
    commands = documented_eval_commands()
    assert len(commands) >= 3 and any("--n" in c for c in commands)
    run = tmp_path / "qs"
    shutil.copytree(run_dir, run)
    for args in commands:
        args = [str(run) if a == "runs/qs" else a for a in args]
        r = invoke(args)
        assert r.exit_code == 0, f"{args}: {r.output}"
    names = sorted(p.name for p in (run / "eval").iterdir())
    assert names == sorted(["step_000002-val-n8-t1", "step_000002-val-n16-t1", "step_000002-val-n1-t0"])
    again = invoke([str(run) if a == "runs/qs" else a for a in commands[0]])
    assert again.exit_code == 0 and "already sampled" in again.stderr


def test_default_folder_conflict_names_a_free_out(run_dir, tmp_path):
    """Settings the default name does not carry (here the chat-template switch) still differ: the
    refusal names the exact --out to add."""
    from archer.core.evaluation.runner import EvalOptions, run_eval

    run = tmp_path / "qs"
    shutil.copytree(run_dir, run)
    run_eval(EvalOptions(model=str(run), n=1, temperature=0.0, limit=2))
    chat = not json.loads((run / "eval" / "step_000002-val-n1-t0" / "eval.json").read_text())[
        "apply_chat_template"
    ]
    with pytest.raises(UsageError) as e:
        run_eval(EvalOptions(model=str(run), n=1, temperature=0.0, limit=2, apply_chat_template=chat))
    hint = e.value.hint
    assert "apply_chat_template" in str(e.value) and hint.startswith("add --out ")
    free = hint.split("add --out ", 1)[1].split(" ")[0]
    assert Path(free).parent == run / "eval" and Path(free).name.startswith("step_000002-val-n1-t0-")
    run_eval(
        EvalOptions(model=str(run), n=1, temperature=0.0, limit=2, apply_chat_template=chat, out=Path(free))
    )
