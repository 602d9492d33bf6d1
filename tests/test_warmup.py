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
    # warmup.slip=first_step: the first result one too high; integer answers keep the near miss
    assert teacher_answers(tok, [chain, plain], "first_step") == [
        ("12-3+8=9+8=17", "13-3+8=10+8=18"),
        ("68", "69"),
    ]


def test_warmup_key_changes_with_settings_tokenizer_and_code(monkeypatch, tmp_path):
    cfg = compose("quickstart").cfg
    tok = build_char_tokenizer()
    base = warmup_key(cfg, 100, tok)
    assert warmup_key(cfg, 100, tok) == base  # deterministic
    assert warmup_key(cfg, 101, tok) != base  # another training set size
    for override in (
        "data.synth.terms=5",
        "warmup.label_noise=0.25",
        "warmup.slip=carry",  # the quickstart's is first_step
        "seed=1",
        "model.tiny.hidden_size=64",
    ):
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


def test_agent_warmup_key_holds_the_tools_not_the_branching_rule():
    """The tool-use demonstrations come from the tools (agent.tools), so their settings key the
    warm-up; the branching rule and the policy loss act in RL only, so aepo-quickstart (which
    extends arpo-quickstart) takes arpo-quickstart's warm-up."""
    tok = build_char_tokenizer()
    arpo = warmup_key(compose("arpo-quickstart").cfg, 400, tok)
    assert warmup_key(compose("aepo-quickstart").cfg, 400, tok) == arpo
    for override in ("agent.algorithm=none", "agent.branch_probability=0.9", "agent.max_turns=1"):
        assert warmup_key(compose("arpo-quickstart", [override]).cfg, 400, tok) == arpo, override
    for override in (
        "agent.tools.search.top_k=2",
        "agent.tools.search.max_chars=20",
        "agent.tools.python.max_output_chars=10",
        "agent.tools.python.enable=false",
        "seed=1",
    ):
        assert warmup_key(compose("arpo-quickstart", [override]).cfg, 400, tok) != arpo, override
    # the tool code (sandbox, search, protocol) is hashed in agent mode only
    plain = warmup_key_parts(compose("quickstart").cfg, 400, tok)
    assert "agent" not in plain


def test_every_module_the_key_hashes_exists():
    """A renamed module would hash as missing and silently stop keying the cache."""
    import importlib.util

    for name in (*warmup.WARMUP_CODE, *warmup.AGENT_CODE):
        assert importlib.util.find_spec(name) is not None, name


class _Predictor:
    """A model double: at every position it predicts the token that follows in the input, except
    on the prompt (garbage, which the probe must ignore) and on the answer's last token of the rows
    in `wrong`."""

    def __init__(self, prompt_len: dict[int, int], wrong: set[int]):
        import torch

        self.torch, self.prompt_len, self.wrong, self.training = torch, prompt_len, wrong, True

    def eval(self):
        self.training = False

    def train(self, mode: bool = True):
        self.training = mode

    def __call__(self, input_ids, attention_mask, position_ids):
        from types import SimpleNamespace

        torch = self.torch
        B, T = input_ids.shape
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], 1)
        logits = torch.nn.functional.one_hot(nxt, 200).float()
        for i in range(B):
            start = T - int(attention_mask[i].sum())
            logits[i, start : start + self.prompt_len[i] - 1] = torch.randn(self.prompt_len[i] - 1, 200)
            if i in self.wrong:
                logits[i, T - 3] = torch.nn.functional.one_hot(torch.tensor(7), 200).float()
        return SimpleNamespace(logits=logits)


def test_probe_counts_rows_whose_every_answer_token_is_the_argmax():
    """The early-stop probe: greedy accuracy by one teacher-forced forward (prompt tokens and
    padding are not graded; one wrong answer token fails its row)."""
    tok = build_char_tokenizer()
    texts = [("23+45=", "68"), ("1+2=", "3"), ("100+200=", "300"), ("7+7=", "14")]
    prompts = [
        Prompt(ids=tok.encode(q, add_special_tokens=False), answer=a, data_source="arithmetic", index=i)
        for i, (q, a) in enumerate(texts)
    ]
    lens = {i: len(q) for i, (q, _) in enumerate(texts)}
    for wrong in (set(), {1}, {0, 2, 3}):
        model = _Predictor(lens, wrong)
        assert warmup.teacher_forced_probe(model, tok, prompts, "cpu")() == 1 - len(wrong) / 4
        assert model.training  # the probe leaves the model's mode as it found it


def test_warmup_stops_once_the_probe_reaches_the_target(monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from archer.core.models.tiny import build_tiny_qwen2

    tok = build_char_tokenizer()
    tiny = OmegaConf.create(
        dict(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32,
             max_position_embeddings=32, tie_word_embeddings=True)
    )  # fmt: skip
    model = build_tiny_qwen2(tiny, len(tok), pad_token_id=0, eos_token_id=1, seed=0)
    prompts = [Prompt(ids=tok.encode("1+2=", add_special_tokens=False), answer="3", data_source="x", index=0)]
    monkeypatch.setattr(warmup, "PROBE_EVERY", 2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 1-layer model: thread wake-ups cost more than the work
    try:
        values = iter([0.1, 0.4, 0.7, 0.9])
        wcfg = OmegaConf.create(dict(steps=9, batch_size=2, lr=1e-3, label_noise=0.0, target_accuracy=0.6))
        stats = warmup.run_warmup(model, tok, prompts, wcfg, seed=0, device="cpu", probe=lambda: next(values))
        assert stats["warmup/steps"] == 6 and stats["warmup/probe_accuracy"] == 0.7
        wcfg.target_accuracy = 0.0  # off: every step runs and no probe is taken
        stats = warmup.run_warmup(model, tok, prompts, wcfg, seed=0, device="cpu", probe=lambda: 1 / 0)
        assert stats["warmup/steps"] == 9 and "warmup/probe_accuracy" not in stats
        assert torch.isfinite(torch.tensor(stats["warmup/final_loss"]))
    finally:
        torch.set_num_threads(before)


class _Writes:
    """A model double that writes `answers[prompt]` after each prompt, whatever it is fed."""

    def __init__(self, tok, answers: dict[str, str]):
        self.tok, self.answers, self.training = tok, answers, True

    def eval(self):
        self.training = False

    def train(self, mode: bool = True):
        self.training = mode

    def __call__(self, input_ids, attention_mask, position_ids):
        from types import SimpleNamespace

        import torch

        B, T = input_ids.shape
        logits = torch.zeros(B, T, 200)
        for i in range(B):
            start = T - int(attention_mask[i].sum())
            text = self.tok.decode(input_ids[i, start:].tolist(), skip_special_tokens=True)
            prompt = text[: text.index("=") + 1]
            want = self.tok.encode(prompt + self.answers[prompt], add_special_tokens=False) + [1]
            for j, t in enumerate(want[1:]):
                if start + j < T:
                    logits[i, start + j, t] = 1.0
        return SimpleNamespace(logits=logits)


def test_probe_with_slips_counts_the_teachers_slip_as_done_as_shown():
    """Under label noise the teacher writes the answer or its slip (+1): a model that writes the
    slip did what it was shown; without `slips` only the right answer counts."""
    tok = build_char_tokenizer()
    texts = [("23+45=", "68"), ("1+2=", "3"), ("7+7=", "14"), ("9+9=", "18")]
    prompts = [
        Prompt(ids=tok.encode(q, add_special_tokens=False), answer=a, data_source="arithmetic", index=i)
        for i, (q, a) in enumerate(texts)
    ]
    writes = {"23+45=": "68", "1+2=": "4", "7+7=": "15", "9+9=": "20"}  # right, slip, slip, neither
    model = _Writes(tok, writes)
    assert warmup.teacher_forced_probe(model, tok, prompts, "cpu")() == 0.25
    assert warmup.teacher_forced_probe(model, tok, prompts, "cpu", slips=True)() == 0.75
