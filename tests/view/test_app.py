"""The viewer driven headless through Textual's Pilot: every feature and every robustness case."""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path

import numpy as np
import pytest

from archer.view.app import ArcherViewer
from archer.view.cells import EMPTY_CELL
from archer.view.colors import DIM_STYLE, NAN_STYLE
from archer.view.widgets.help import HelpScreen

from .conftest import SIZE, screen_text, settle, static_text
from .tracegen import STEP1, STEP2, char_ids, entropy_for, stored_influence_for


@contextlib.asynccontextmanager
async def opened(path: Path, **kw):
    app = ArcherViewer(path, **kw)
    app.animation_level = "none"  # tab underlines would make every key wait for an animation
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        yield app, pilot


async def press(pilot, *keys: str) -> None:
    await pilot.press(*keys)
    await settle(pilot)


def readout(app) -> str:
    return static_text(app, "#readout")


def table_keys(app, selector: str) -> list[str]:
    return list(app.query_one(selector).keys)


# ---------------------------------------------------------------------------------- navigation


async def test_opens_latest_step_lists_steps_and_says_when_a_step_is_empty(run_dir):
    async with opened(run_dir) as (app, pilot):
        assert app.step == 4  # the latest step, which has no responses
        assert "step 4 has no responses" in static_text(app, "#responses-message")
        text = screen_text(app)
        # the steps table comes from the manifest alone: reward, accuracy, entropy mean
        assert "1.471" in text and "1.509" in text and "1.550" in text
        assert app.query_one("#steps").row_count == 4
        await press(pilot, "2")
        assert "step 4 has no responses" in screen_text(app)


async def test_step_and_response_keys_move_and_update_the_prompt(run_dir):
    async with opened(run_dir, step=1) as (app, pilot):
        assert (app.step, app.row) == (1, 0)
        assert "prompt 12+7=" in screen_text(app).replace("\n", " ") or "12+7=" in static_text(
            app, "#prompt-text"
        )
        await press(pilot, "full_stop", "full_stop")
        assert app.row == 2
        assert app.tokens.ids.tolist() == char_ids(STEP1[2])
        await press(pilot, "comma")
        assert app.row == 1
        await press(pilot, "right_square_bracket")
        assert app.step == 2 and app.row == 0
        await press(pilot, "left_square_bracket", "left_square_bracket")
        assert app.step == 1  # stops at the first step
        await press(pilot, "full_stop", "full_stop", "full_stop", "full_stop", "full_stop")
        assert app.row == 5
        assert "p1" in static_text(app, "#meta")  # rows 4..7 are the second prompt
        assert "What is 3*4?" in static_text(app, "#prompt-text")


async def test_enter_on_a_response_opens_the_tokens_tab(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        app.query_one("#responses-table").focus()
        await press(pilot, "down", "down", "enter")
        assert app.active_tab() == "tokens"
        assert app.row == 2
        assert 'text "1"' in readout(app)


# ---------------------------------------------------------------------------------- responses: sort, filter


async def test_response_table_sorts_by_any_column_and_filters(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        table = app.query_one("#responses-table")
        table.focus()
        assert table_keys(app, "#responses-table") == [str(i) for i in range(8)]
        await press(pilot, "s")  # next column: group
        assert app.responses_tab.sort == ("uid", False)
        await press(pilot, "s", "s")  # sample, then reward
        assert app.responses_tab.sort == ("reward", False)
        assert table_keys(app, "#responses-table")[:4] == ["1", "3", "6", "7"]  # reward 0 first, stable
        await press(pilot, "S")
        assert app.responses_tab.sort == ("reward", True)
        assert table_keys(app, "#responses-table")[:4] == ["0", "2", "4", "5"]
        # a click on a column header sorts by it (ascending first)
        x = sum(w + 2 for w in table.widths[:6]) + 1  # inside the 7th column: length
        await pilot.click("#responses-table", offset=(x, 0))
        await settle(pilot)
        assert app.responses_tab.sort == ("response_length", False)
        await pilot.click("#responses-table", offset=(x, 0))
        await settle(pilot)
        assert app.responses_tab.sort == ("response_length", True)
        # length sort puts the empty response (0 tokens) first
        app.query_one("#responses-table").post_message(
            type(table).SortChanged(table, "response_length", False)
        )
        await settle(pilot)
        assert table_keys(app, "#responses-table")[0] == "7"

        await press(pilot, "a")  # accepted only
        assert app.responses_tab.filter.accepted == "accepted"
        assert sorted(table_keys(app, "#responses-table"), key=int) == ["0", "1", "4", "6"]
        await press(pilot, "a")
        assert sorted(table_keys(app, "#responses-table"), key=int) == ["2", "3", "5"]
        await press(pilot, "a")  # unknown: row 7 (no filter verdict)
        assert table_keys(app, "#responses-table") == ["7"]
        await press(pilot, "a")
        assert app.responses_tab.filter.accepted == "all"

        app.query_one("#reward-min").value = "0.5"
        await settle(pilot)
        assert sorted(table_keys(app, "#responses-table"), key=int) == ["0", "2", "4", "5"]
        assert "4 of 8 responses" in static_text(app, "#response-count")
        app.query_one("#reward-max").value = "oops"
        await settle(pilot)
        assert app.query_one("#reward-max").has_class("-invalid")
        assert len(table_keys(app, "#responses-table")) == 4  # the bad bound is ignored
        app.query_one("#reward-min").value = "2"
        await settle(pilot)
        assert app.query_one("#responses-table").row_count == 0
        assert "no response passes the filters" in static_text(app, "#responses-message")


# ---------------------------------------------------------------------------------- heatmaps and cursor


async def test_cursor_readout_shows_position_id_text_entropy_influence(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        app.select_response(3)  # "21\n x"
        await settle(pilot)
        await press(pilot, "2")
        assert app.focused is app.query_one("#token-view")
        assert readout(app).startswith("token 1/5")
        await press(pilot, "right")
        r = readout(app)
        ent = float(np.float16(entropy_for(5, 3, 2)[1]))
        inf = float(stored_influence_for(5, 3)[1])
        assert "pos 1" in r and f"id {char_ids('1')[0]}" in r and 'text "1"' in r
        assert f"entropy {ent:.3f}" in r and f"influence {inf:.3f}" in r
        await press(pilot, "right")
        r = readout(app)
        assert 'text "↵"' in r  # the newline, shown visibly
        assert "influence NaN (not captured)" in r  # every third token was not captured
        await press(pilot, "right")
        assert 'text "·"' in readout(app)
        await press(pilot, "end")
        assert "token 5/5" in readout(app)
        await press(pilot, "home")
        assert "token 1/5" in readout(app)
        # the newline token ends its line in both panes (same layout)
        pane_e, pane_i = app.query_one("#entropy-pane"), app.query_one("#influence-pane")
        assert pane_e._layout.line_of.tolist() == [0, 0, 0, 1, 1]
        assert pane_i._layout is pane_e._layout


async def test_nan_influence_drawn_neutral_and_missing_influence_said(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        await press(pilot, "2")
        styles = app.query_one("#token-view").model.styles["influence"]
        assert styles[0] is not NAN_STYLE and styles[1] is not NAN_STYLE
        # token 2 of "19" does not exist; take a longer response
        app.select_response(2)  # "19 yes": NaN at 2 and 5
        await settle(pilot)
        styles = app.query_one("#token-view").model.styles["influence"]
        assert [s is NAN_STYLE for s in styles] == [False, False, True, False, False, True]
        assert "NaN: not captured" in static_text(app, "#influence-legend")
        await press(pilot, "right_square_bracket")  # step 3 has no influence at all
        assert "influence not computed for this response" in static_text(app, "#influence-legend")
        assert "influence not computed" in readout(app)


async def test_markup_looking_token_text_is_shown_literally(run_dir):
    async with opened(run_dir, step=1) as (app, pilot):
        app.select_response(1)  # "[bold]20[/bold]"
        await settle(pilot)
        await press(pilot, "2")
        text = screen_text(app)
        assert "[bold]20[/bold]" in text  # heatmap cells are segments, never markup
        await press(pilot, "right")
        assert 'text "b"' in readout(app)
        await press(pilot, "3")
        assert '"["' in screen_text(app)  # token table cell


async def test_empty_response_and_long_response(run_dir, tmp_path):
    async with opened(run_dir, step=2, export_dir=tmp_path) as (app, pilot):
        app.select_response(7)  # 0 tokens
        await settle(pilot)
        await press(pilot, "2")
        assert "(empty response: 0 tokens)" in screen_text(app)
        assert "empty response (0 tokens)" in readout(app)
        await press(pilot, "right", "end", "e")  # nothing to move to; export still works (header only)
        assert (tmp_path / "archer_step000002_row7_tokens.csv").read_text().strip() == (
            "step,row,uid,position,token_id,text,entropy,influence"
        )
        await press(pilot, "right_square_bracket")  # step 3, row 0: 3001 tokens
        assert app.tokens.n == 3001
        pane_e, pane_i = app.query_one("#entropy-pane"), app.query_one("#influence-pane")
        assert pane_e._layout.n_lines > pane_e.size.height  # longer than the screen
        await press(pilot, "end")
        assert "token 3001/3001" in readout(app)
        assert pane_e.scroll_y > 0 and pane_i.scroll_y == pane_e.scroll_y  # scrolled together
        await press(pilot, "home")
        assert pane_e.scroll_y == 0 and pane_i.scroll_y == 0
        await press(pilot, "pagedown")
        assert app.query_one("#token-view").model.cursor > 0


async def test_colour_scale_toggles_response_step_percentile(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        await press(pilot, "2")
        view = app.query_one("#token-view")
        tok = app.tokens
        s = view.model.scales["entropy"]
        assert (s.mode, s.lo, s.hi) == ("response", float(tok.entropy.min()), float(tok.entropy.max()))
        assert "per response" in static_text(app, "#entropy-legend")
        await press(pilot, "c")
        st = app.data.step_stats(2)
        s, si = view.model.scales["entropy"], view.model.scales["influence"]
        assert (s.mode, s.lo, s.hi) == ("step", st.entropy_min, st.entropy_max)
        assert si.hi == pytest.approx(st.influence_absmax) and si.lo == -si.hi  # symmetric around 0
        assert "per step" in static_text(app, "#entropy-legend")
        await press(pilot, "c")
        s = view.model.scales["entropy"]
        assert (s.mode, s.lo, s.hi) == ("percentile", st.entropy_p05, st.entropy_p95)
        assert "p5..p95" in static_text(app, "#entropy-legend")
        assert "scale: percentile" in static_text(app, "#status")
        await press(pilot, "c")
        assert view.model.scales["entropy"].mode == "response"


# ------------------------------------------------------------------------ filters, search, token table


async def test_entropy_and_influence_ranges_dim_tokens_outside(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        app.select_response(2)  # 6 tokens
        await settle(pilot)
        await press(pilot, "2")
        ent = app.tokens.entropy
        cut = float(np.sort(ent)[3])
        app.query_one("#ent-min").value = str(cut)
        await settle(pilot)
        model = app.query_one("#token-view").model
        assert model.keep == (ent >= cut).tolist()
        lay = app.query_one("#entropy-pane")._layout
        strip = model.line_strip(lay, "entropy", 0)
        dimmed = [
            seg.style.color == DIM_STYLE.color and seg.style.bgcolor is None for seg in strip if seg.text
        ]
        assert dimmed == [not k for k in model.keep]
        await press(pilot, "3")
        assert len(table_keys(app, "#token-table-view")) == int((ent >= cut).sum())
        assert "filters on" in static_text(app, "#token-table-note")
        # an influence bound leaves out NaN (not captured) tokens
        app.query_one("#ent-min").value = ""
        app.query_one("#inf-min").value = "-1"
        await settle(pilot)
        inf = app.tokens.influence
        assert model.keep == (~np.isnan(inf)).tolist()


async def test_search_matches_across_tokens_with_next_and_previous(run_dir):
    async with opened(run_dir, step=3) as (app, pilot):
        await press(pilot, "slash")
        assert app.focused is app.query_one("#search")
        await pilot.press(*"c b")  # spans three tokens: "c", " ", "b"
        await settle(pilot)
        n = len(app.tokens_tab.matches)
        assert n == 499 and "499 matches" in static_text(app, "#search-count")
        await press(pilot, "enter")
        assert app.focused is app.query_one("#token-view")
        first = app.tokens_tab.matches[0][0]
        assert app.query_one("#token-view").model.cursor == first == 1003
        assert "match 1/499" in readout(app)
        await press(pilot, "n")
        assert app.query_one("#token-view").model.cursor == app.tokens_tab.matches[1][0]
        assert "match 2/499" in readout(app)
        await press(pilot, "N", "N")
        assert app.query_one("#token-view").model.cursor == app.tokens_tab.matches[-1][0]  # wraps around
        model = app.query_one("#token-view").model
        assert model.match[1003] and model.match[1005] and not model.match[0]
        app.query_one("#search").value = "zzz"
        await settle(pilot)
        assert app.tokens_tab.matches == [] and "0 matches" in static_text(app, "#search-count")


async def test_token_table_sorts_and_jumps_to_the_token(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        app.select_response(2)
        await settle(pilot)
        await press(pilot, "3")
        assert table_keys(app, "#token-table-view") == [str(i) for i in range(6)]
        await press(pilot, "s")  # entropy ascending
        ent = app.tokens.entropy
        assert table_keys(app, "#token-table-view") == [str(i) for i in np.argsort(ent, kind="stable")]
        await press(pilot, "S")  # entropy descending
        keys = table_keys(app, "#token-table-view")
        assert keys[0] == str(int(np.argmax(ent)))
        await press(pilot, "s")  # influence descending; NaN last
        inf = app.tokens.influence
        keys = table_keys(app, "#token-table-view")
        assert keys[0] == str(int(np.nanargmax(inf)))
        assert {keys[-1], keys[-2]} == {"2", "5"}  # the NaN tokens
        table = app.query_one("#token-table-view")
        assert keys[table.cursor_row] == "0"  # the cursor stays on the heatmap's token
        table.move_cursor(row=0)
        await press(pilot, "enter")
        assert app.active_tab() == "tokens"
        assert app.query_one("#token-view").model.cursor == int(np.nanargmax(inf))


# ------------------------------------------------------------------------ top-K, group, across steps


async def test_topk_lists_extremes_and_jumps_to_response_and_token(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        await press(pilot, "4")
        table = app.query_one("#topk-table")
        assert table.row_count > 0
        hits = table.hits
        top = hits["entropy high:1"]
        all_ent = np.concatenate([entropy_for(len(t), i, 2).astype(np.float16) for i, t in enumerate(STEP2)])
        assert top.value == pytest.approx(float(all_ent.max()))
        low_inf = hits["influence low:1"]
        all_inf = np.concatenate([stored_influence_for(len(t), i) for i, t in enumerate(STEP2)])
        assert low_inf.value == pytest.approx(float(np.nanmin(all_inf)))
        assert "influence captured for" in static_text(app, "#topk-note")
        # jump: move the cursor to the first "influence low" row and press enter
        row_index = table.get_row_index("influence low:1")
        table.focus()
        table.move_cursor(row=row_index)
        await press(pilot, "enter")
        assert app.active_tab() == "tokens"
        assert (app.row, app.query_one("#token-view").model.cursor) == (low_inf.row, low_inf.pos)
        assert float(app.tokens.influence[low_inf.pos]) == pytest.approx(low_inf.value)


async def test_topk_on_a_step_without_influence_and_on_an_empty_step(run_dir):
    async with opened(run_dir, step=1) as (app, pilot):
        await press(pilot, "4")
        assert "no influence captured" in static_text(app, "#topk-note")
        assert not any(k.startswith("influence") for k in app.query_one("#topk-table").hits)
        await press(pilot, "right_square_bracket", "right_square_bracket", "right_square_bracket")
        assert app.step == 4
        assert "has no tokens" in static_text(app, "#topk-note")


async def test_group_view_shows_all_samples_and_marks_accepted(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        await press(pilot, "g")
        assert app.active_tab() == "group"
        head = static_text(app, "#group-head")
        assert "group p0" in head and "4 responses" in head and "2 accepted, 2 rejected" in head
        assert "12+7=" in head
        text = screen_text(app)
        assert text.count("✓ accepted") == 2 and text.count("✗ rejected") == 2
        assert "19·yes" in text  # response previews, whitespace visible
        await press(pilot, "comma")  # still group p0 (row 0 is first)
        app.select_response(5)
        await settle(pilot)
        head = static_text(app, "#group-head")
        assert "group p1" in head and "1 not filtered" in head
        table = app.query_one("#group-table")
        table.focus()
        table.move_cursor(row=table.get_row_index("6"))
        await press(pilot, "enter")
        assert app.active_tab() == "tokens" and app.row == 6


async def test_across_steps_sparklines_and_position_map(run_dir):
    async with opened(run_dir, step=1) as (app, pilot):
        await press(pilot, "6")
        spark = app.query_one("#spark-entropy_mean")
        assert len(spark.data) == 4
        assert spark.data[:3] == pytest.approx([1.470679, 1.509111, 1.54973])
        assert "4 steps" in static_text(app, "#range-reward_mean")
        assert "(1 unknown)" in static_text(app, "#range-accuracy")  # step 4 has no accuracy
        m = static_text(app, "#entropy-map")
        assert "step 1" in m and "step 4" in m and "token position" in m and "mean H" in m
        emap = app.data.entropy_map()
        assert emap.steps == [1, 2, 3, 4] and np.isnan(emap.means[3]).all()
        # first bin of step 1 = mean entropy of every token at positions 0..bin_size-1
        vals = [entropy_for(len(t), i, 1).astype(np.float16)[: emap.bin_size] for i, t in enumerate(STEP1)]
        assert emap.means[0, 0] == pytest.approx(
            float(np.concatenate(vals).astype(np.float32).mean()), rel=1e-5
        )


# ---------------------------------------------------------------------------------- palette, help, exports


async def test_command_palette_jumps_to_a_step_and_a_uid(run_dir):
    async with opened(run_dir, step=1) as (app, pilot):
        await press(pilot, "ctrl+p")
        await pilot.press(*"step 3")
        await settle(pilot)
        await press(pilot, "enter")
        assert app.step == 3
        await press(pilot, "ctrl+p")
        await pilot.press(*"uid p1")
        await settle(pilot)
        await press(pilot, "enter")
        assert app.active_tab() == "group"
        assert "group p1" in static_text(app, "#group-head")
        assert app.row == 4


async def test_help_screen_lists_keys_and_closes(run_dir):
    async with opened(run_dir, step=1) as (app, pilot):
        await press(pilot, "question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for words in (
            "colour scale",
            "next / previous search match",
            "export the current view's tokens",
            "command palette",
        ):
            assert words in text
        await press(pilot, "escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_exports_write_csv_atomically_and_notify(run_dir, tmp_path):
    async with opened(run_dir, step=2, export_dir=tmp_path) as (app, pilot):
        app.select_response(3)
        await settle(pilot)
        await press(pilot, "e")
        path = tmp_path / "archer_step000002_row3_tokens.csv"
        rows = list(csv.DictReader(path.open()))
        assert [r["text"] for r in rows] == ["2", "1", "\n", " ", "x"]
        assert [int(r["token_id"]) for r in rows] == char_ids("21\n x")
        assert rows[2]["influence"] == ""  # NaN -> empty cell
        assert float(rows[1]["entropy"]) == pytest.approx(
            float(np.float16(entropy_for(5, 3, 2)[1])), rel=1e-6
        )
        # with a filter and a sort, the export follows the view
        app.query_one("#ent-min").value = "1"
        app.token_table_tab.sort = ("entropy", True)
        await settle(pilot)
        await press(pilot, "e")
        rows = list(csv.DictReader(path.open()))
        ents = [float(r["entropy"]) for r in rows]
        assert ents == sorted(ents, reverse=True) and min(ents) >= 1
        notes = [n.message for n in app._notifications]
        assert any(str(path) in m and "exported" in m for m in notes)

        tab = app.responses_tab
        tab.filter = type(tab.filter)("accepted", None, None)
        tab.apply()
        await press(pilot, "E")
        rpath = tmp_path / "archer_step000002_responses.csv"
        rrows = list(csv.DictReader(rpath.open()))
        assert [int(r["row"]) for r in rrows] == [0, 1, 4, 6]
        assert rrows[0]["uid"] == "p0" and rrows[0]["accepted"] == "True"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


async def test_export_to_a_missing_directory_is_a_message(run_dir, tmp_path):
    async with opened(run_dir, step=2, export_dir=tmp_path / "gone" / "deeper") as (app, pilot):
        (tmp_path / "gone").write_text("a file, not a directory")
        await press(pilot, "E")
        notes = [n.message for n in app._notifications]
        assert any("cannot write" in m for m in notes)
        assert app.is_running


# ---------------------------------------------------------------------------------- decoding modes


async def test_without_a_tokenizer_ids_are_shown_and_the_status_says_why(bare_trace):
    async with opened(bare_trace, step=2) as (app, pilot):
        status = static_text(app, "#status")
        assert "token ids" in status and "no tokenizer recorded" in status
        await press(pilot, "2")
        ids = char_ids(STEP2[0])
        assert f"{ids[0]} {ids[1]}" in screen_text(app)  # cells are ids, one apart
        assert "text: (no tokenizer)" in readout(app)
        await press(pilot, "slash")
        await pilot.press(*str(ids[1]))
        await settle(pilot)
        assert app.tokens_tab.matches == [(1, 1)]  # in ids mode the search matches ids


async def test_no_decode_flag_and_tokenizer_that_fails_to_load(run_dir, tmp_path):
    async with opened(run_dir, step=2, no_decode=True) as (app, pilot):
        assert "--no-decode" in static_text(app, "#status")
        assert app.texts == [str(i) for i in char_ids(STEP2[0])]
    broken = tmp_path / "tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    (broken / "tokenizer_config.json").write_text("{}")
    async with opened(run_dir, step=2, tokenizer=broken) as (app, pilot):
        status = static_text(app, "#status")
        assert "token ids" in status and "failed to load" in status
        assert app.is_running


async def test_decoded_text_follows_the_recorded_tokenizer(run_dir):
    async with opened(run_dir, step=1) as (app, pilot):
        assert "tokenizer " in static_text(app, "#status")
        app.select_response(3)  # "18\nno"
        await settle(pilot)
        assert app.texts == list("18\nno")
        assert app.query_one("#token-view").model.cells == ["1", "8", "↵", "n", "o"]
        assert EMPTY_CELL not in app.query_one("#token-view").model.cells


# ---------------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("fixture", ["truncated_trace", "corrupt_trace"])
async def test_unreadable_step_is_a_message_not_a_crash(fixture, request):
    path = request.getfixturevalue(fixture)
    async with opened(path, step=2) as (app, pilot):
        msg = static_text(app, "#responses-message")
        assert "cannot read step 2" in msg and "step_000002.parquet" in msg
        assert app.is_running
        await press(pilot, "2", "4")  # other tabs say so too, nothing raises
        await press(pilot, "right_square_bracket")  # step 3 reads fine
        assert app.step == 3 and app.tokens is not None
        assert static_text(app, "#responses-message") == ""


@pytest.mark.parametrize(
    ("fixture", "words"),
    [("no_manifest_trace", "has no manifest.jsonl"), ("future_trace", "schema v99")],
)
async def test_unopenable_trace_shows_the_error_in_the_app(fixture, words, request):
    path = request.getfixturevalue(fixture)
    async with opened(path) as (app, pilot):
        text = screen_text(app)
        assert "Cannot open this trace" in text and words in text and "Hint:" in text
        assert "Traceback" not in text
        await press(pilot, "2", "right_square_bracket", "e", "E", "g", "c")
        assert app.is_running
        await press(pilot, "q")
        assert not app.is_running


async def test_step_not_in_trace_falls_back_to_the_latest(run_dir):
    async with opened(run_dir, step=42) as (app, pilot):
        assert app.step == 4
        assert any("step 42 is not in this trace" in n.message for n in app._notifications)


async def test_influence_all_nan_row_and_math_of_nan_summaries(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        # row 7 is empty: its summaries are NaN/null and show as dashes, not errors
        rec = app.table.record(7)
        assert math.isnan(rec["entropy_mean"]) and math.isnan(rec["influence_sum"])
        assert rec["accepted"] is None


async def test_reload_picks_up_steps_a_running_training_wrote(tmp_path):
    from archer.core.trace import TraceWriter

    from .tracegen import _step_table

    trace = tmp_path / "trace"
    with TraceWriter(trace, {"preset": "live"}) as w:
        w.submit(1, _step_table(1, STEP1, False))
    async with opened(trace) as (app, pilot):
        assert app.step_numbers() == [1]
        with TraceWriter(trace, {}, resume_after_step=1) as w:  # the run goes on
            w.submit(2, _step_table(2, STEP2, True))
        await press(pilot, "r")
        assert app.step_numbers() == [1, 2]
        assert app.query_one("#steps").row_count == 2
        assert any("1 new step" in n.message for n in app._notifications)
        assert app.step == 1  # reloading does not move the user


async def test_loading_indicator_while_a_step_loads_and_click_moves_the_cursor(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        app.select_step(3)
        assert app.query_one("#responses-table").loading  # set before the worker reads the file
        assert app.query_one("#token-view").loading
        await settle(pilot)
        assert not app.query_one("#responses-table").loading and not app.query_one("#token-view").loading
        await press(pilot, "2")
        pane = app.query_one("#entropy-pane")
        lay = pane._layout
        await pilot.click("#influence-pane", offset=(5, 1))  # line 1, column 5 of the other pane
        await settle(pilot)
        want = lay.token_at(1, 5)
        assert want is not None and app.query_one("#token-view").model.cursor == want
        assert f"token {want + 1}/3001" in readout(app)


async def test_a_converted_old_format_trace_opens_with_influence_where_it_was_captured(tmp_path, tok_dir):
    from archer.core.trace.npz_import import import_npz

    from .tracegen import OLD_TEXTS, write_old_npz_trace

    old = write_old_npz_trace(tmp_path / "old")
    import_npz(old, tmp_path / "new" / "trace", tokenizer_path=str(tok_dir))
    async with opened(tmp_path / "new", step=1) as (app, pilot):
        assert app.step_numbers() == [1, 2]
        assert [int(k) for k in table_keys(app, "#responses-table")] == [0, 1, 2, 3]
        assert "text: tokenizer" in static_text(app, "#status")
        await press(pilot, "2")
        assert app.texts == list(OLD_TEXTS[0])
        assert "influence -0.250" in readout(app)
        await press(pilot, "right")
        assert "influence NaN (not captured)" in readout(app)
        await press(pilot, "full_stop")  # row 1 exists only in the entropy trace
        assert "influence not computed for this response" in static_text(app, "#influence-legend")
        assert "accepted unknown" in static_text(app, "#meta")


async def test_a_trace_with_no_steps_yet_says_so(tmp_path):
    from archer.core.trace import TraceWriter

    TraceWriter(tmp_path / "trace", {"preset": "starting"}).close()  # a run that has not written a step
    async with opened(tmp_path / "trace") as (app, pilot):
        assert "no steps yet" in static_text(app, "#responses-message")
        await press(pilot, "2", "right_square_bracket", "4", "6", "e", "E")
        assert app.is_running and app.step is None


# ---------------------------------------------------------------------------------- terminal sizes


async def test_step_list_follows_the_terminal_width_and_shows_the_current_step(tmp_path, tok_dir):
    from .tracegen import write_long_trace

    trace = write_long_trace(tmp_path / "run" / "trace", tokenizer_dir=tok_dir)
    app = ArcherViewer(trace)
    app.animation_level = "none"
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        box, steps = app.query_one("#steps-box"), app.query_one("#steps")
        assert app.step == 60 and steps.cursor_row == 59  # opened at the latest step, which is the cursor
        visible = steps.scrollable_content_region.height - 1  # rows under the header
        assert steps.scroll_y <= 59 < steps.scroll_y + visible  # ... and scrolled into view
        assert box.display and box.outer_size.width == 48  # 2/5 of 120
        await press(pilot, "left_square_bracket")
        assert app.step == 59 and steps.cursor_row == 58
        await pilot.resize_terminal(200, 50)
        await settle(pilot)
        assert box.outer_size.width == 58  # at most 58
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert not box.display  # too narrow: the responses take the width
        assert app.query_one("#responses-box").size.width == 80
        await press(pilot, "t")  # toggled on, whatever the width
        assert box.display and box.outer_size.width == 32 and app.focused is steps
        visible = steps.scrollable_content_region.height - 1
        assert steps.scroll_y <= 58 < steps.scroll_y + visible
        await press(pilot, "up", "enter")  # the step list works from here
        assert app.step == 58 and app.focused is app.query_one("#responses-table")
        await pilot.resize_terminal(200, 50)
        await settle(pilot)
        assert box.display
        await press(pilot, "t")  # toggled off stays off on a wide terminal
        assert not box.display
        await press(pilot, "2", "t")  # from another tab: back to the responses with the list
        assert app.active_tab() == "responses" and box.display


# ---------------------------------------------------------------------------------- focus, keys, mouse


async def test_enter_in_a_filter_returns_the_keys_to_the_view(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        await press(pilot, "f")  # the reward range of the responses tab
        assert app.focused is app.query_one("#reward-min")
        await press(pilot, "0", "full_stop", "5", "enter")
        assert app.query_one("#reward-min").value == "0.5"
        assert app.focused is app.query_one("#responses-table")
        assert sorted(table_keys(app, "#responses-table"), key=int) == ["0", "2", "4", "5"]
        await press(pilot, "left_square_bracket")  # a step key, not a character of the field
        assert app.step == 1 and app.query_one("#reward-min").value == "0.5"
        await press(pilot, "right_square_bracket", "2", "f")  # the entropy range of the tokens tab
        assert app.focused is app.query_one("#ent-min")
        await press(pilot, "1", "enter")
        assert app.focused is app.query_one("#token-view")
        assert app.query_one("#ent-min").value == "1"
        before = app.row
        await press(pilot, "full_stop")  # next response, not a "." in the field
        assert app.row != before and app.query_one("#ent-min").value == "1"


async def test_mouse_opens_tabs_and_rows(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        await pilot.click("#tabs Tab#--content-tab-group")
        await settle(pilot)
        assert app.active_tab() == "group"
        await pilot.click("#tabs Tab#--content-tab-responses")
        await settle(pilot)
        assert app.active_tab() == "responses"
        await pilot.click("#responses-table", offset=(2, 4))  # header, then rows 0..: row 3
        await settle(pilot)
        assert app.row == 3 and app.active_tab() == "responses"
        await pilot.click("#responses-table", offset=(2, 4))  # a second click opens it
        await settle(pilot)
        assert app.active_tab() == "tokens" and app.row == 3
        await press(pilot, "1")
        await pilot.click("#steps", offset=(2, 1))  # step 1
        await settle(pilot)
        await pilot.click("#steps", offset=(2, 1))
        await settle(pilot)
        assert app.step == 1


def test_help_lists_every_key_the_viewer_binds():
    """Each key of the app, the tables and the heatmap is in the help screen (and so in docs)."""
    from archer.view.widgets.heatmap import TokenView
    from archer.view.widgets.help import KEYS
    from archer.view.widgets.linetable import LineTable
    from archer.view.widgets.tables import SortableTable

    shown = {
        "question_mark": "?",
        "left_square_bracket": "[",
        "right_square_bracket": "]",
        "comma": ",",
        "full_stop": ".",
        "slash": "/",
        "left": "←",
        "right": "→",
        "up": "↑",
        "down": "↓",
        "pageup": "pgup",
        "pagedown": "pgdn",
    }
    listed = {k for _, keys, _ in KEYS for k in keys.split()}
    if "…" in listed:  # "1 … 6"
        listed |= {"2", "3", "4", "5"}
    bound = {
        k
        for cls in (ArcherViewer, TokenView, LineTable, SortableTable)
        for b in cls.BINDINGS
        for k in b.key.split(",")
    }
    missing = sorted(k for k in bound if shown.get(k, k) not in listed)
    assert not missing, missing
    docs = (Path(__file__).resolve().parents[2] / "docs" / "viewer.md").read_text()
    undocumented = sorted(k for k in bound - {"2", "3", "4", "5"} if f"`{shown.get(k, k)}`" not in docs)
    assert not undocumented, undocumented  # (docs write the tabs as `1` … `6`)


# ---------------------------------------------------------------------------------- influence analysis


async def test_topk_tab_shows_influence_statistics_and_each_hit_in_its_text(run_dir):
    from archer.view.colors import fmt

    async with opened(run_dir, step=2) as (app, pilot):
        await press(pilot, "4")
        note = static_text(app, "#topk-note")
        s = app.stats
        assert s.auc_groups == 2 and f"AUC accepted vs rejected {fmt(s.auc)}" in note and "2 groups" in note
        assert f"positive mass {100 * s.influence_positive_share:.0f}%" in note
        table = app.query_one("#topk-table")
        hit = table.hits["entropy high:1"]
        whole = STEP2[hit.row]
        lo, hi = max(0, hit.pos - 8), hit.pos + 1 + 8  # CONTEXT_TOKENS before and after the hit
        row = table.rows[table.get_row_index("entropy high:1")]
        from archer.view.cells import visible

        assert str(row[-1]) == visible(whole[lo:hi])  # the window around the hit, whitespace visible
        await press(pilot, "6")
        for _ in range(50):  # the map (and the AUC per step) is computed by a worker
            if "step 2:" in static_text(app, "#range-auc"):
                break
            await settle(pilot)
        assert f"step 2: {fmt(s.auc)}" in static_text(app, "#range-auc")


async def test_find_in_step_lists_matches_in_every_response_and_jumps(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        await press(pilot, "4", "slash")  # on the top-K tab, / searches the whole step
        assert app.focused is app.query_one("#step-find")
        await press(pilot, "1", "enter")
        table = app.query_one("#topk-table")
        # "1" in STEP2: "19" (rows 0, 2), "18" (1), "21\n x" (3), "12", "12!", "13" (4, 5, 6)
        expected = [(r, t.find("1")) for r, t in enumerate(STEP2) if "1" in t]
        assert [(h.row, h.pos) for h in table.hits.values()] == expected
        assert set(k.split(":")[0] for k in table.hits) == {"match"}
        assert "7 matches in 7 responses" in static_text(app, "#step-find-count")
        assert app.focused is table
        row = table.rows[table.get_row_index("match:4")]  # row 3: "21\n x", the "1" at position 1
        assert str(row[-1]) == "21↵·x"
        await press(pilot, "end", "enter")  # the last match: row 6, "13"
        assert app.active_tab() == "tokens" and (app.row, app.query_one("#token-view").model.cursor) == (6, 0)
        await press(pilot, "4", "slash")  # a match spanning tokens, smart case
        app.query_one("#step-find").value = "9 Y"
        await press(pilot, "enter")
        assert "no match" in static_text(app, "#step-find-count")  # a capital: case-sensitive
        await press(pilot, "slash")
        app.query_one("#step-find").value = "9 y"
        await press(pilot, "enter")
        hits = list(table.hits.values())
        assert [(h.row, h.pos, h.length) for h in hits] == [(2, 1, 3)]  # "9", " ", "y" of "19 yes"
        await press(pilot, "left_square_bracket")  # the search follows the step: step 1 has none
        assert app.step == 1 and "no match" in static_text(app, "#step-find-count")
        await press(pilot, "slash")
        app.query_one("#step-find").value = ""
        await press(pilot, "enter")  # empty: the extremes again
        assert any(k.startswith("entropy high") for k in table.hits)


async def test_group_tab_shows_an_accepted_and_a_rejected_response_side_by_side(run_dir):
    from archer.view.colors import NAN_STYLE

    async with opened(run_dir, step=2) as (app, pilot):
        await press(pilot, "g")  # group p0: rows 0..3 accepted T T F F, rewards 1 0 1 0
        a, b = static_text(app, "#compare-a"), static_text(app, "#compare-b")
        assert a.startswith("accepted  row 0 ") and a.endswith(STEP2[0])  # current row, accepted
        assert b.startswith("rejected  row 3 ") and b.endswith(STEP2[3])  # lowest-reward rejected
        # one influence scale for both: row 3's third token was not captured (NaN): neutral
        content = app.query_one("#compare-b").content
        nan_spans = [sp for sp in content.spans if sp.style == NAN_STYLE]
        assert [content.plain[sp.start : sp.end] for sp in nan_spans] == [STEP2[3][2]]
        assert "the pair" in static_text(app, "#compare-legend")
        table = app.query_one("#group-table")
        table.focus()
        table.move_cursor(row=table.get_row_index("2"))  # a rejected row goes to the right
        await settle(pilot)
        assert static_text(app, "#compare-b").startswith("rejected  row 2 ")
        assert static_text(app, "#compare-a").startswith("accepted  row 0 ")
        table.move_cursor(row=table.get_row_index("1"))  # an accepted row to the left
        await settle(pilot)
        assert static_text(app, "#compare-a").startswith("accepted  row 1 ")
        app.select_response(7)  # group p1: row 7 has no verdict, so the default pair shows
        await settle(pilot)
        assert static_text(app, "#compare-a").startswith("accepted  row 4 ")
        assert static_text(app, "#compare-b").startswith("rejected  row 5 ")
    async with opened(run_dir, step=1) as (app, pilot):  # no accepted flags, no influence
        await press(pilot, "g")
        assert "no accepted response" in static_text(app, "#compare-a")
        assert "influence not computed" in static_text(app, "#compare-legend")


async def test_follow_a_prompt_across_steps_and_jump_back(run_dir):
    async with opened(run_dir, step=2) as (app, pilot):
        app.select_response(5)  # group p1 ("What is 3*4?") at step 2
        await settle(pilot)
        await press(pilot, "p")
        assert app.active_tab() == "across"
        table = app.query_one("#prompt-steps")
        for _ in range(50):  # a worker reads each step's prompt column
            if table.row_count:
                break
            await settle(pilot)
        # p1 is sampled in steps 1..3 (rows 4..7); step 4 has no responses
        assert list(table.keys) == ["1", "2", "3"]
        h = table.history["2"]
        assert h.rows == (4, 5, 6, 7) and (h.accepted, h.rejected) == (2, 1)
        assert h.reward_mean == pytest.approx(0.5) and h.accuracy == pytest.approx(0.5)
        assert math.isfinite(h.influence_mean) and math.isnan(table.history["1"].influence_mean)
        head = static_text(app, "#prompt-head")
        assert "What is 3*4?" in head and "sampled in 3 steps" in head
        assert app.focused is table
        table.move_cursor(row=table.get_row_index("3"))
        await press(pilot, "enter")  # to step 3, the prompt's first response there
        assert app.step == 3 and app.row == 4 and app.active_tab() == "tokens"
        assert app.focused is app.query_one("#token-view")  # the keys follow to the tokens tab
