"""The warm-up's teacher and its cache key: a run never picks up a warm-up made for other settings."""

from __future__ import annotations

from archer.core import warmup
from archer.core.config import compose
from archer.core.models.tiny import build_char_tokenizer
from archer.core.rollout.prompts import Prompt
from archer.core.warmup import teacher_answers, warmup_key, warmup_key_parts


def test_teacher_works_chains_step_by_step_and_slips_on_the_first_carry():
    tok = build_char_tokenizer()
    chain = Prompt(
        ids=tok.encode("7+5-3+8=", add_special_tokens=False), answer="17", data_source="chain", index=0
    )
    plain = Prompt(
        ids=tok.encode("23+45=", add_special_tokens=False), answer="68", data_source="arithmetic", index=1
    )
    assert teacher_answers(tok, [chain, plain]) == [("12-3+8=9+8=17", "2-3+8=-1+8=7"), ("68", "69")]


def test_warmup_key_changes_with_settings_tokenizer_and_code(monkeypatch, tmp_path):
    cfg = compose("quickstart").cfg
    tok = build_char_tokenizer()
    base = warmup_key(cfg, 100, tok)
    assert warmup_key(cfg, 100, tok) == base  # deterministic
    assert warmup_key(cfg, 101, tok) != base  # another training set size
    for override in ("data.synth.terms=5", "warmup.label_noise=0.25", "seed=1", "model.tiny.hidden_size=64"):
        assert warmup_key(compose("quickstart", [override]).cfg, 100, tok) != base, override
    # warmup.cache itself does not change what a warm-up is
    assert warmup_key(compose("quickstart", ["warmup.cache=false"]).cfg, 100, tok) == base
    # a tokenizer with another padding side (or vocabulary) is another warm-up
    tok.padding_side = "right"
    assert warmup_key(cfg, 100, tok) != base
    # an edit to the generator's code is another warm-up
    tok.padding_side = "left"
    extra = tmp_path / "archer_fake_generator.py"
    extra.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(warmup, "WARMUP_CODE", (*warmup.WARMUP_CODE, "archer_fake_generator"))
    before = warmup_key(cfg, 100, tok)
    extra.write_text("X = 2\n")
    assert warmup_key(cfg, 100, tok) != before
    parts = warmup_key_parts(cfg, 100, tok)
    assert parts["device"] in ("cpu", "cuda") and "torch" in parts["versions"]
    # the device the warm-up actually runs on, when the caller names it
    assert warmup_key(cfg, 100, tok, device="cpu") != warmup_key(cfg, 100, tok, device="cuda:0")
    assert warmup_key_parts(cfg, 100, tok, device="cuda:0")["device"] == "cuda"


def test_every_module_the_key_hashes_exists():
    """A renamed module would hash as missing and silently stop keying the cache."""
    import importlib.util

    for name in (*warmup.WARMUP_CODE, *warmup.AGENT_CODE):
        assert importlib.util.find_spec(name) is not None, name
