"""The viewer's pure parts: data layer, decoding, colour scales and token layout (no app)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from archer.core.trace.decode import HFDecoder, IdDecoder, load_decoder, resolve_tokenizer
from archer.view.cells import EMPTY_CELL, cell_text, visible
from archer.view.colors import Scale, diverging_scale, legend, sequential_scale, style_lut
from archer.view.layout import layout_tokens
from archer.view.model import (
    CONTEXT_TOKENS,
    LRU,
    TraceData,
    search_ids,
    search_tokens,
    sort_order,
    token_filter_mask,
    token_order,
)

from .tracegen import STEP2, char_ids, entropy_for, stored_influence_for

# ---------------------------------------------------------------------------------- data layer


def test_data_module_imports_no_textual():
    import subprocess

    code = (
        "import sys, archer.view.model, archer.view.cells, archer.view.colors, archer.view.layout, "
        "archer.core.trace.decode, archer.core.trace.export, archer.core.trace.stats; "
        "print([m for m in ('textual', 'torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_steps_come_from_the_manifest(bare_trace):
    d = TraceData(bare_trace)
    rows = d.steps()
    assert [r.step for r in rows] == [1, 2, 3, 4]
    assert rows[1].n_responses == 8 and rows[1].influence_rows == 8
    assert rows[1].n_tokens == sum(len(t) for t in STEP2)
    assert math.isnan(rows[3].reward_mean) and rows[3].n_responses == 0
    assert d.cached_steps() == []  # no step file was opened


def test_response_table_order_filters_and_groups(bare_trace):
    t = TraceData(bare_trace).step_table(2)
    assert t.n == 8
    assert t.order().tolist() == list(range(8))
    assert t.order("reward", True).tolist() == [0, 2, 4, 5, 1, 3, 6, 7]
    # unknown values (the empty response's NaN entropy) sort last both ways
    assert t.order("entropy_mean").tolist()[-1] == 7
    assert t.order("entropy_mean", True).tolist()[-1] == 7
    assert t.order(accepted="accepted").tolist() == [0, 1, 4, 6]
    assert t.order(accepted="unknown").tolist() == [7]
    assert t.order(reward_min=0.5, reward_max=1.0).tolist() == [0, 2, 4, 5]
    assert t.order("uid", True).tolist()[:4] == [4, 5, 6, 7]
    assert list(t.groups) == ["p0", "p1"] and t.group_rows("p1").tolist() == [4, 5, 6, 7]
    assert t.find_uid("p") == "p0" and t.find_uid("1") == "p1" and t.find_uid("zz") is None
    rec = t.record(7)
    assert rec["accepted"] is None and rec["response_length"] == 0 and rec["correct"] is False
    with pytest.raises(ValueError):
        t.order(accepted="maybe")


def test_sort_order_keeps_nan_last():
    v = np.array([2.0, np.nan, 1.0, 3.0])
    assert sort_order(v, False).tolist() == [2, 0, 3, 1]
    assert sort_order(v, True).tolist() == [3, 0, 2, 1]


def test_response_tokens_and_lru_bound_memory(bare_trace):
    d = TraceData(bare_trace, max_steps=2, max_responses=3)
    r = d.response(2, 3)
    assert r.ids.tolist() == char_ids(STEP2[3])
    np.testing.assert_array_equal(r.entropy, entropy_for(5, 3, 2).astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(r.influence, stored_influence_for(5, 3))
    assert d.response(1, 0).influence is None  # step 1 has no influence
    for step in (1, 2, 3):
        d.step_table(step)
    assert d.cached_steps() == [2, 3]
    for row in range(6):
        d.response(2, row)
    assert len(d._responses) == 3
    lru = LRU(2)
    lru.put("a", 1), lru.put("b", 2), lru.get("a"), lru.put("c", 3)
    assert lru.keys() == ["a", "c"]


def test_token_filters_order_and_search(bare_trace):
    r = TraceData(bare_trace).response(2, 2)  # "19 yes", NaN influence at 2 and 5
    keep = token_filter_mask(r.entropy, r.influence, (1.0, None))
    assert keep.tolist() == (r.entropy >= 1.0).tolist()
    keep = token_filter_mask(r.entropy, r.influence, (None, None), (0.0, None))
    assert keep.tolist() == [True, True, False, True, True, False]
    assert not token_filter_mask(r.entropy, None, (None, None), (None, 1.0)).any()
    assert token_order(r, "influence", True)[-2:].tolist() == [2, 5]
    assert token_order(r, "position", True).tolist() == [5, 4, 3, 2, 1, 0]
    assert token_order(r, "entropy", False, keep=np.array([True, False] * 3)).tolist() == sorted(
        [0, 2, 4], key=lambda i: (r.entropy[i], i)
    )
    texts = list("19 yes")
    assert search_tokens(texts, "9 y") == [(1, 3)]
    assert search_tokens(texts, "YES") == []  # smart case: a capital makes it case-sensitive
    assert search_tokens(["Ab", "c", "ab"], "ab") == [(0, 0), (2, 2)]
    assert search_tokens(["aa", "a"], "aa") == [(0, 0), (0, 1)]  # overlapping matches
    assert search_ids(np.array([5, 7, 5]), " 5 ") == [(0, 0), (2, 2)]
    assert search_ids(np.array([5]), "x") == []


def test_step_stats_topk_and_scales(bare_trace):
    d = TraceData(bare_trace)
    s = d.step_stats(2, k=3)
    ent = np.concatenate(
        [entropy_for(len(t), i, 2).astype(np.float16).astype(np.float32) for i, t in enumerate(STEP2)]
    )
    inf = np.concatenate([stored_influence_for(len(t), i) for i, t in enumerate(STEP2)])
    assert s.tokens == len(ent) and s.entropy_max == pytest.approx(ent.max())
    assert s.entropy_p95 == pytest.approx(np.percentile(ent, 95))
    assert s.influence_tokens == int(np.isfinite(inf).sum())
    assert s.influence_absmax == pytest.approx(np.nanmax(np.abs(inf)))
    hi = s.top["entropy high"]
    assert [h.value for h in hi] == pytest.approx(sorted(ent, reverse=True)[:3])
    lo = s.top["influence low"]
    assert lo[0].value == pytest.approx(np.nanmin(inf))
    # each hit points at its own token: the value there is the hit's value
    for h in hi + lo:
        r = d.response(2, h.row)
        vals = r.entropy if h.kind.startswith("entropy") else r.influence
        assert vals[h.pos] == pytest.approx(h.value) and r.ids[h.pos] == h.token_id
        assert h.context[-1] == h.token_id
    none = d.step_stats(1)
    assert none.influence_tokens == 0 and none.top["influence high"] == []
    empty = d.step_stats(4)
    assert empty.tokens == 0 and empty.top["entropy high"] == [] and math.isnan(empty.entropy_max)


def test_step_influence_statistics_by_hand(bare_trace):
    """AUC, positive mass and coverage of step 2, recomputed here from the fixture's values."""
    from archer.view.model import step_auc

    d = TraceData(bare_trace)
    s = d.step_stats(2, k=3)
    inf = [stored_influence_for(len(t), i).astype(np.float64) for i, t in enumerate(STEP2)]
    flat = np.concatenate(inf)
    ok = flat[np.isfinite(flat)]
    assert s.influence_row_tokens == len(flat) and s.influence_tokens == len(ok)
    assert s.influence_positive_share == pytest.approx(ok[ok > 0].sum() / np.abs(ok).sum())
    # accepted [T, T, F, F | T, F, T, ?]; groups p0 = rows 0..3, p1 = rows 4..7 (row 7: 0 tokens)
    mean = [float(np.nanmean(v)) if len(v) else math.nan for v in inf]

    def auc(pos, neg):
        pairs = [(mean[a], mean[b]) for a in pos for b in neg]
        return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs) / len(pairs)

    expected = (auc([0, 1], [2, 3]) + auc([4, 6], [5])) / 2
    assert s.auc_groups == 2 and s.auc == pytest.approx(expected, rel=1e-5)
    assert step_auc(d.step_table(2)) == (pytest.approx(expected, rel=1e-5), 2)
    assert d.step_stats(1).auc_groups == 0 and math.isnan(d.step_stats(1).auc)  # no accepted flags
    # each hit carries the tokens after it, within its response
    for h in s.top["entropy high"] + s.top["influence low"]:
        ids = d.response(2, h.row).ids.tolist()
        assert list(h.after) == ids[h.pos + 1 : h.pos + 1 + CONTEXT_TOKENS]
    emap = d.entropy_map(n_bins=4)
    assert emap.auc is not None and emap.auc[emap.steps.index(2)] == pytest.approx(expected, rel=1e-5)
    assert math.isnan(emap.auc[emap.steps.index(1)])


def test_search_step_finds_a_text_in_every_response_with_a_cap(bare_trace, tok_dir):
    d = TraceData(bare_trace)
    hits, total = d.search_step(2, "1", load_decoder(tok_dir), limit=3)
    assert total == sum("1" in t for t in STEP2) == 7  # one "1" in each of 7 responses
    assert [(h.row, h.pos, h.kind, h.rank) for h in hits] == [
        (0, 0, "match", 1),
        (1, 0, "match", 2),
        (2, 0, "match", 3),
    ]
    assert hits[0].context == tuple(char_ids("1")) and hits[0].after == tuple(char_ids("9"))
    # without a tokenizer the ids are searched
    nine = char_ids("9")[0]
    hits, total = d.search_step(2, str(nine), IdDecoder())
    assert total == 2 and [(h.row, h.pos) for h in hits] == [(0, 1), (2, 1)]
    assert d.search_step(4, "1", IdDecoder()) == ([], 0)  # a step without responses


def test_fidelity_notes_say_what_the_influence_settings_approximate():
    from archer.view.model import fidelity_notes

    assert fidelity_notes({}) == [] and fidelity_notes({"influence_settings": None}) == []
    notes = fidelity_notes(
        {
            "influence_settings": {
                "hessian_mode": "inverse",
                "hessian_source": "response",
                "output_function": "training_loss",
                "projection": "rademacher",
                "projection_dim_factor": 32,
                "max_modules": 4,
                "module_name_filter": "mlp\\.down_proj$",
                "max_tokens_per_response": 64,
                "max_prompts_per_step": 0,
                "storage_dtype": "bf16",
            }
        }
    )
    assert notes == [
        "hessian inverse from response",
        "output training_loss",
        "contrast include (a response's own gradient counted: self-influence)",
        "rademacher projection (dim factor 32)",
        "at most 4 modules matching mlp\\.down_proj$",
        "≤ 64 tokens per response captured (others NaN)",
        "stored as bf16",
    ]
    assert "every token captured" in fidelity_notes({"influence_settings": {"max_tokens_per_response": 0}})
    exact = fidelity_notes({"influence_settings": {"contrast": "leave_one_out", "projection": "identity"}})
    assert exact[:2] == [
        "contrast leave_one_out (a response's own gradient left out)",
        "exact gradients (identity projection)",
    ]


# ---------------------------------------------------------------------------------- decoding


def test_char_tokenizer_texts_join_to_the_decoded_response(tok_dir):
    dec = load_decoder(tok_dir)
    assert isinstance(dec, HFDecoder) and dec.is_text
    ids = char_ids("a [b]\nc") + [1]  # + <eos>
    texts = dec.token_texts(ids)
    assert texts == ["a", " ", "[", "b", "]", "\n", "c", "<eos>"]
    assert dec.decode(char_ids("12+7=")) == "12+7="
    assert dec.token_texts([]) == []
    # an id outside the vocabulary does not break its neighbours
    assert dec.token_texts(char_ids("ab") + [10**6] + char_ids("c")) == ["a", "b", "⟨1000000⟩", "c"]


def test_multibyte_characters_are_attributed_to_the_token_that_completes_them():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tk.train_from_iterator(["hello world, the cat sat"] * 20, trainer)
    dec = HFDecoder(PreTrainedTokenizerFast(tokenizer_object=tk), "bpe")
    text = "hé 😀 中!"
    ids = dec.tok.encode(text)
    naive = [dec.tok.decode([i]) for i in ids]
    assert any("\ufffd" in t for t in naive)  # one token at a time breaks the characters
    texts = dec.token_texts(ids)
    assert "".join(texts) == text and not any("\ufffd" in t for t in texts)
    emoji_tok = texts.index("😀")
    assert texts[emoji_tok - 3 : emoji_tok] == ["", "", ""]  # bytes that completed nothing yet
    assert [cell_text(t) for t in texts[emoji_tok - 1 : emoji_tok + 1]] == [EMPTY_CELL, "😀"]


def test_decoder_fallbacks_and_tokenizer_resolution(tmp_path, tok_dir):
    assert load_decoder(None, note="why").label == "token ids (why)"
    assert "--no-decode" in load_decoder(tok_dir, no_decode=True).label
    assert "not found" in load_decoder(tmp_path / "nope").note
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{")
    dec = load_decoder(bad)
    assert isinstance(dec, IdDecoder) and "failed to load" in dec.note
    assert dec.token_texts([3, 40]) == ["3", "40"] and dec.decode([3, 40]) == "3 40"
    trace_dir = tmp_path / "run" / "trace"
    trace_dir.mkdir(parents=True)
    assert resolve_tokenizer(None, {"tokenizer_path": str(tok_dir)}, trace_dir) == (tok_dir, None)
    path, note = resolve_tokenizer(None, {"tokenizer_path": "/gone"}, trace_dir)
    assert path is None and "/gone not found" in note
    (trace_dir.parent / "tokenizer").mkdir()
    assert resolve_tokenizer(None, {}, trace_dir)[0] == trace_dir.parent / "tokenizer"
    assert resolve_tokenizer(tmp_path / "x", {}, trace_dir)[0] == tmp_path / "x"


def test_visible_whitespace_and_cells():
    assert visible("a b\tc\n\r\x00\x7f") == "a·b→c↵␍␀␡"
    assert cell_text("") == EMPTY_CELL
    assert cell_text(" \n") == "·↵"
    assert cell_text("\u0301") == EMPTY_CELL + "\u0301"  # a lone combining mark gets a visible base


# ---------------------------------------------------------------------------------- colours and layout


def test_scales_quantize_and_nan():
    s = sequential_scale(0.0, 2.0, "response")
    assert s.quantize(np.array([0.0, 1.0, 2.0, 5.0, -1.0])).tolist() == [0, 128, 255, 255, 0]
    d = diverging_scale(-0.5, "step")
    assert (d.lo, d.hi) == (-0.5, 0.5)
    assert d.quantize(np.array([-0.5, 0.0, 0.5, np.nan])).tolist() == [0, 128, 255, 0]
    assert Scale(1.0, 1.0).quantize(np.array([1.0])).tolist() == [0]  # constant: no crash
    assert diverging_scale(float("nan"), "x").quantize(np.array([0.1])).tolist() == [127]
    lut = style_lut("diverging")
    assert len(lut) == 256 and lut[0].bgcolor != lut[255].bgcolor
    mid = lut[128].bgcolor.triplet
    assert min(mid) > 200  # 0 is (near) neutral grey-white
    text = legend(d, "I", nan_note=True).plain
    assert "-0.500" in text and "0.500" in text and "NaN: not captured" in text


def test_layout_wraps_breaks_and_finds_tokens():
    lay = layout_tokens([3, 3, 3, 1, 2], [False, False, False, True, False], width=7)
    assert lay.line_of.tolist() == [0, 0, 1, 1, 2]
    assert lay.x.tolist() == [0, 3, 0, 3, 0]
    assert lay.n_lines == 3 and list(lay.tokens_on(1)) == [2, 3]
    assert lay.token_at(0, 4) == 1 and lay.token_at(1, 0) == 2 and lay.token_at(9, 0) is None
    gap = layout_tokens([2, 2, 2], [False] * 3, width=5, gap=1)
    assert gap.line_of.tolist() == [0, 0, 1]
    wide = layout_tokens([10, 1], [False, False], width=4)
    assert wide.line_of.tolist() == [0, 1]  # a token wider than the line gets a line of its own
    assert layout_tokens([], [], width=10).n_lines == 0
