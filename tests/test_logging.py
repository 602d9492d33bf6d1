"""Logging like verl users expect: sample generations every N steps (tensorboard text, a W&B
table), histograms of per-token entropy and influence, W&B entity/group/tags, and a
`verl.trainer.logger` list that adds to trainer.logging.* instead of dropping it."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from small_run import SMALL_PRESET, SMALL_RUN

from archer.core.config import compose
from archer.core.metrics import MetricsLog, Sinks, open_sinks, pick_samples, record_histograms
from archer.core.rollout.record import StepRecord

SMALL = [
    *SMALL_RUN,
]


def a_record() -> StepRecord:
    """Two groups of two responses; influence on the first group only."""
    ids = lambda *x: np.array(x, dtype=np.int32)  # noqa: E731
    return StepRecord(
        uid=["a", "a", "b", "b"],
        group_index=[0, 0, 1, 1],
        sample_index=[0, 1, 0, 1],
        prompt_ids=[ids(1, 2), ids(1, 2), ids(3), ids(3)],
        response_ids=[ids(5), ids(6, 7), ids(8), ids(9)],
        entropy=[np.array([0.5]), np.array([0.25, 1.0]), np.array([2.0]), np.array([0.0])],
        advantages=[np.zeros(1), np.zeros(2), np.zeros(1), np.zeros(1)],
        loss_mask=[np.ones(1), np.ones(2), np.ones(1), np.ones(1)],
        reward=np.array([1.0, 0.0, 0.5, 0.0]),
        truncated=np.zeros(4, dtype=bool),
        influence=[np.array([0.1]), np.array([-0.2, 0.3]), None, None],
    )


def decode(ids: list[int]) -> str:
    assert all(type(i) is int for i in ids)  # plain ints: what every tokenizer's decode takes
    return "".join(f"<{i}>" for i in ids)


def test_samples_take_one_response_per_group_first_and_histograms_every_token():
    rec = a_record()
    assert pick_samples(rec, decode, 3) == [
        ("<1><2>", "<5>", 1.0),
        ("<3>", "<8>", 0.5),
        ("<1><2>", "<6><7>", 0.0),
    ]
    h = record_histograms(rec)
    assert h["trace/entropy"].tolist() == [0.5, 0.25, 1.0, 2.0, 0.0]
    assert h["trace/influence"].tolist() == pytest.approx([0.1, -0.2, 0.3])
    no_infl = a_record()
    no_infl.influence = None
    assert set(record_histograms(no_infl)) == {"trace/entropy"}


def logging_cfg(**kw):
    base = {
        "tensorboard": False,
        "wandb": False,
        "wandb_project": "archer",
        "wandb_entity": None,
        "wandb_group": None,
        "wandb_tags": [],
        "samples_every": 2,
        "samples": 2,
        "histograms_every": 3,
        "log_every": 1,
    }
    return OmegaConf.create({**base, **kw})


def read_tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_scalars_samples_text_and_histograms_when_due(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path, logging_cfg=logging_cfg(tensorboard=True))
    rec = a_record()
    due = []
    for step in range(1, 7):
        log.log(step, {"reward/mean": 0.1 * step})
        due.append(log.wants_record(step))
        if due[-1]:
            log.log_record(step, rec, decode)
    log.close()
    assert due == [False, True, True, True, False, True]  # samples every 2, histograms every 3
    acc = read_tensorboard(tmp_path / "tensorboard")
    assert [e.step for e in acc.Scalars("reward/mean")] == [1, 2, 3, 4, 5, 6]
    texts = acc.Tensors("samples/text_summary")
    assert [e.step for e in texts] == [2, 4, 6]
    text = texts[0].tensor_proto.string_val[0].decode()
    assert "**step 2**" in text and "reward 1" in text and "<1><2>" in text and "<8>" in text
    assert "<6><7>" not in text  # samples=2: one response of each group
    assert [e.step for e in acc.Histograms("trace/entropy")] == [3, 6]
    hist = acc.Histograms("trace/influence")[0].histogram_value
    assert hist.num == 3 and hist.min == pytest.approx(-0.2) and hist.max == pytest.approx(0.3)


class FakeWandb(types.ModuleType):
    """What archer calls on the wandb module, recorded."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logs, self.finished = [], [], 0
        self.run = None

        class Table:
            def __init__(self, columns, data):
                self.columns, self.data = columns, [list(r) for r in data]

        class Histogram:
            def __init__(self, values):
                self.values = np.asarray(values).tolist()

        self.Table, self.Histogram = Table, Histogram

    def init(self, **kw):
        self.inits.append(kw)
        self.run = object()

    def log(self, data, step=None):
        self.logs.append((step, data))

    def finish(self):
        self.finished += 1


def test_wandb_gets_entity_group_tags_a_growing_samples_table_and_histograms(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = logging_cfg(wandb=True, wandb_entity="lab", wandb_group="sweep-1", wandb_tags=["grpo", "tiny"])
    log = MetricsLog(tmp_path, logging_cfg=cfg, run_name="r1", config={"seed": 1})
    (init,) = fake.inits
    assert (init["entity"], init["group"], init["tags"], init["name"]) == (
        "lab",
        "sweep-1",
        ["grpo", "tiny"],
        "r1",
    )
    rec = a_record()
    for step in (2, 3, 4):
        log.log_record(step, rec, decode)
    log.close()
    tables = [(s, d["samples"]) for s, d in fake.logs if "samples" in d]
    assert [s for s, _ in tables] == [2, 4]
    assert tables[0][1].columns == ["step", "prompt", "response", "reward"]
    assert tables[0][1].data == [[2, "<1><2>", "<5>", 1.0], [2, "<3>", "<8>", 0.5]]
    assert len(tables[1][1].data) == 4 and tables[1][1].data[2][0] == 4  # the table keeps earlier rows
    hists = [(s, d) for s, d in fake.logs if "trace/entropy" in d]
    assert [s for s, _ in hists] == [3]
    assert hists[0][1]["trace/entropy"].values == [0.5, 0.25, 1.0, 2.0, 0.0]
    assert fake.finished == 1


def test_wandb_offline_run_holds_the_samples_table_and_histograms(tmp_path, monkeypatch):
    """The real W&B client, offline: the table is written as JSON beside the run; the run record
    (entity, group, tags) and the histogram go into the run's .wandb file."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = logging_cfg(wandb=True, wandb_entity="archer-lab", wandb_group="group-x", wandb_tags=["tag-y"])
    sinks = open_sinks(tmp_path, cfg, run_name="offline-test")
    sinks.scalars(1, {"reward/mean": 0.5})
    sinks.samples(1, [("1+1=", "2", 1.0)])
    sinks.samples(2, [("2+2=", "5", 0.0)])
    sinks.histograms(2, {"trace/entropy": [0.1, 0.2, 0.3]})
    sinks.close()
    import wandb

    wandb.teardown()  # the W&B service writes the run file; wait for it to finish
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    tables = [
        json.loads(p.read_text()) for p in (run / "files" / "media" / "table").glob("samples_*.table.json")
    ]
    assert {len(t["data"]) for t in tables} == {1, 2}
    assert max(tables, key=lambda t: len(t["data"]))["data"] == [[1, "1+1=", "2", 1.0], [2, "2+2=", "5", 0.0]]
    data = next(run.glob("run-*.wandb")).read_bytes()
    for text in (b"archer-lab", b"group-x", b"tag-y", b"trace/entropy", b'"histogram"'):
        assert text in data, text


def test_no_sink_no_record_work(tmp_path):
    log = MetricsLog(tmp_path, logging_cfg=logging_cfg())
    assert not log.wants_record(2) and not log.wants_record(3)
    log.close()
    assert isinstance(log.sinks, Sinks) and not log.sinks.active


def test_local_run_logs_sample_generations_and_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from archer.core.engines.local.trainer import LocalTrainer

    out = tmp_path / "run"
    c = compose(
        SMALL_PRESET,
        [
            *SMALL,
            f"trainer.cache_dir={tmp_path / 'cache'}",
            "trainer.total_steps=2",
            "trainer.val_before_train=false",
            "trainer.logging.tensorboard=true",
            "trainer.logging.samples_every=1",
            "trainer.logging.samples=3",
            "trainer.logging.histograms_every=2",
        ],
    )
    t = LocalTrainer(c, out)
    try:
        t.setup()
        t.fit()
    finally:
        t.close()
    acc = read_tensorboard(out / "tensorboard")
    texts = acc.Tensors("samples/text_summary")
    assert [e.step for e in texts] == [1, 2]
    text = texts[0].tensor_proto.string_val[0].decode()
    assert text.count("**sample ") == 3 and "prompt:" in text and "response:" in text
    assert "=" in text  # the arithmetic prompts, decoded
    (hist,) = acc.Histograms("trace/entropy")
    assert hist.step == 2 and hist.histogram_value.num > 0


# --------------------------------------------------------------------------- verl mapping


def verl_mapping(*overrides: str):
    pytest.importorskip("verl", reason="the verl extra is not installed")
    from archer.core.engines.verl.config import compose_verl

    return compose_verl(compose("quickstart-verl", list(overrides)), Path("/tmp/archer-logging-test"))


def test_verl_logger_list_adds_to_trainer_logging_and_says_so():
    vc = verl_mapping("verl.trainer.logger=[console,mlflow]", "trainer.logging.wandb=true")
    assert list(vc.select("trainer.logger")) == ["console", "mlflow", "wandb"]
    assert vc.tracker_notes == ["verl.trainer.logger [console, mlflow] + wandb from trainer.logging.*"]
    same = verl_mapping("verl.trainer.logger=[console,wandb]", "trainer.logging.wandb=true")
    assert list(same.select("trainer.logger")) == ["console", "wandb"] and same.tracker_notes == []
    plain = verl_mapping("trainer.logging.tensorboard=true")
    assert list(plain.select("trainer.logger")) == ["console", "tensorboard"]


def test_verl_gets_sample_generations_and_wandb_run_settings():
    vc = verl_mapping(
        "trainer.logging.wandb=true",
        "trainer.logging.samples=6",
        "trainer.logging.wandb_entity=lab",
        "trainer.logging.wandb_group=g",
        "trainer.logging.wandb_tags=[a,b]",
    )
    assert vc.select("trainer.log_val_generations") == 6
    assert verl_mapping("trainer.logging.samples_every=0").select("trainer.log_val_generations") == 0
    from archer.core.engines.verl.config import apply_runtime_env

    apply_runtime_env(vc, Path("/tmp/archer-logging-test"))
    env = vc.select("ray_kwargs.ray_init.runtime_env.env_vars")
    assert (env["WANDB_ENTITY"], env["WANDB_RUN_GROUP"], env["WANDB_TAGS"]) == ("lab", "g", "a,b")
    assert vc.select("archer.logging.histograms_every") == 10


def test_readme_logging_table_names_every_logging_key():
    """The README's "Logging" table and trainer.logging's schema name the same keys."""
    import re

    from archer.core.config.compose import schema_keys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Logging", 1)[1].split("\n## ", 1)[0]
    first_cells = [ln.split("|")[1] for ln in section.splitlines() if ln.startswith("| `")]
    named = {f"trainer.logging.{k}" for cell in first_cells for k in re.findall(r"`([a-z_]+)`", cell)}
    schema = {k for k, v in schema_keys().items() if k.startswith("trainer.logging.") and not v.is_section}
    assert named == schema - {"trainer.logging.log_every"}  # log_every: the console's, in local-engine.md
