"""The `archer view` app: the selection (trace, step, response), the workers that read, and routing.

Every read (the trace, a step, a response, a step's top-K, a group, the across-steps map, the
tokenizer) runs in a `@work(thread=True, exclusive=True)` worker that posts a dataclass message
(`archer.view.messages`); the app's handlers hand the result to the tab that shows it
(`archer.view.tabs`) and drop answers for a step or response the user has already left. Each tab
owns its own state (sorts, filters, scales, search) and asks for a new selection with a message.
Problems the user can meet (a corrupt step, no tokenizer, an empty response) are shown as text in
the app; handlers never let an exception through.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Input, Static, TabbedContent
from textual.worker import get_current_worker

from archer.core.trace.decode import Decoder, IdDecoder, load_decoder, resolve_tokenizer
from archer.core.trace.export import (
    RESPONSE_EXPORT_COLUMNS,
    TOKEN_EXPORT_COLUMNS,
    export_file,
    response_record,
    token_records,
)
from archer.errors import ArcherError
from archer.view import messages as msg
from archer.view.cells import printable, visible
from archer.view.guard import error_text, guarded
from archer.view.model import ResponseTable, ResponseTokens, StepRow, StepStats, TraceData, fidelity_notes
from archer.view.palette import ViewerCommands
from archer.view.tabs.across import AcrossTab
from archer.view.tabs.group import GroupTab
from archer.view.tabs.responses import ResponsesTab
from archer.view.tabs.token_table import TokenTableTab
from archer.view.tabs.tokens import TokensTab
from archer.view.tabs.topk import TopKTab
from archer.view.widgets.help import HelpScreen

TABS = ("responses", "tokens", "token-table", "topk", "group", "across")
PREVIEW_TOKENS = 160
COMPARE_TOKENS = 4000  # tokens of each response the group tab's side-by-side shows


class ArcherViewer(App[None]):
    """Explore a trace: steps, responses, token heatmaps, top-K, groups and trends."""

    TITLE = "archer view"
    CSS_PATH = "archer.tcss"
    COMMANDS = App.COMMANDS | {ViewerCommands}
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark,f1", "help", "help"),
        Binding("1", "tab('responses')", "responses", show=False),
        Binding("2", "tab('tokens')", "tokens", show=False),
        Binding("3", "tab('token-table')", "token table", show=False),
        Binding("4", "tab('topk')", "top-K", show=False),
        Binding("5", "tab('group')", "group", show=False),
        Binding("6", "tab('across')", "across steps", show=False),
        Binding("left_square_bracket", "step(-1)", "prev step"),
        Binding("right_square_bracket", "step(1)", "next step"),
        Binding("comma", "response(-1)", "prev resp"),
        Binding("full_stop", "response(1)", "next resp"),
        Binding("g", "group", "group"),
        Binding("c", "scale", "scale"),
        Binding("slash", "search", "search"),
        Binding("n", "match(1)", "next match", show=False),
        Binding("N", "match(-1)", "prev match", show=False),
        Binding("f", "filters", "filters", show=False),
        Binding("a", "accepted", "accepted filter", show=False),
        Binding("e", "export_tokens", "export tokens"),
        Binding("E", "export_responses", "export responses", show=False),
        Binding("escape", "leave_input", "leave input", show=False),
        Binding("r", "refresh_steps", "reload steps", show=False),
        Binding("t", "toggle_steps", "step list"),
        Binding("p", "follow_prompt", "follow prompt", show=False),
    ]

    def __init__(
        self,
        path: str | os.PathLike,
        tokenizer: str | os.PathLike | None = None,
        step: int | None = None,
        no_decode: bool = False,
        export_dir: str | os.PathLike | None = None,
        max_cached_steps: int = 4,
    ) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        self.tokenizer_arg = tokenizer
        self.initial_step = step
        self.no_decode = no_decode
        self.export_dir = Path(export_dir).expanduser() if export_dir else Path.cwd()
        self.max_cached_steps = max_cached_steps
        #: the opened trace (None until the open worker answers)
        self.data: TraceData | None = None
        #: the step list, from the manifest
        self.steps: list[StepRow] = []
        #: turns ids into text; ids until the tokenizer has loaded (or for good, without one)
        self.decoder: Decoder = (
            IdDecoder("loading the tokenizer…") if not no_decode else IdDecoder("--no-decode")
        )
        self.decoder_pending = not no_decode
        #: the selection: step, its responses, the response and its tokens as decoded
        self.step: int | None = None
        self.table: ResponseTable | None = None
        self.row: int | None = None
        self.tokens: ResponseTokens | None = None
        self.texts: list[str] = []
        self.ids_mode = True
        #: (row, token position) to show once the step or response on its way arrives
        self.pending: tuple[int | None, int | None] = (None, None)
        #: the current step's top-K and percentiles, and the step whose read is on its way
        self.stats: StepStats | None = None
        self.stats_pending: int | None = None
        self.status_note = ""
        #: why the trace could not be opened (the app then shows only that)
        self.error: str | None = None

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="responses", id="tabs"):
            yield ResponsesTab("1 Responses", id="responses")
            yield TokensTab("2 Tokens", id="tokens")
            yield TokenTableTab("3 Token table", id="token-table")
            yield TopKTab("4 Top-K", id="topk")
            yield GroupTab("5 Group", id="group")
            yield AcrossTab("6 Across steps", id="across")
        yield Static(id="error-panel")
        yield Static(id="status")
        yield Footer()

    @property
    def responses_tab(self) -> ResponsesTab:
        return self.query_one(ResponsesTab)

    @property
    def tokens_tab(self) -> TokensTab:
        return self.query_one(TokensTab)

    @property
    def token_table_tab(self) -> TokenTableTab:
        return self.query_one(TokenTableTab)

    @property
    def topk_tab(self) -> TopKTab:
        return self.query_one(TopKTab)

    @property
    def group_tab(self) -> GroupTab:
        return self.query_one(GroupTab)

    @property
    def across_tab(self) -> AcrossTab:
        return self.query_one(AcrossTab)

    def on_resize(self, event) -> None:
        for tab in self.query(ResponsesTab):  # (none yet on the first resize, before compose)
            tab.fit(event.size.width)

    def on_mount(self) -> None:
        self.responses_tab.fit(self.size.width)
        self.sub_title = str(self.path)
        self.query_one("#error-panel").display = False
        self.set_status(f"opening {self.path} …")
        self.tokens_tab.view.clear("loading…")
        self.open_trace()

    # ------------------------------------------------------------------ helpers used by the palette
    def step_numbers(self) -> list[int]:
        return [s.step for s in self.steps]

    def current_uids(self) -> list[str]:
        return list(self.table.groups) if self.table is not None else []

    def palette_commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        return [
            (
                "Export tokens to CSV",
                "the current response's tokens, as filtered and sorted",
                self.action_export_tokens,
            ),
            (
                "Export responses to CSV",
                "the step's response table, as filtered and sorted",
                self.action_export_responses,
            ),
            ("Toggle colour scale", "per response → per step → step percentile", self.action_scale),
            ("Group view", "all responses of the current prompt", self.action_group),
            ("Across steps", "trends and the step x position entropy map", lambda: self.action_tab("across")),
            (
                "Top-K tokens",
                "highest and lowest entropy and influence of the step",
                lambda: self.action_tab("topk"),
            ),
            (
                "Follow prompt across steps",
                "every step that sampled the current response's prompt",
                self.action_follow_prompt,
            ),
            ("Keys", "the help screen", self.action_help),
        ]

    # ------------------------------------------------------------------ status
    def set_status(self, note: str | None = None) -> None:
        if note is not None:
            self.status_note = note
        t = Text(no_wrap=True, overflow="ellipsis")
        if self.data is not None:
            t.append(f"{self.data.dir}", style="bold")
            t.append(f" · {len(self.steps)} steps")
            if self.step is not None:
                t.append(f" · step {self.step}")
        t.append(" · ")
        if self.decoder_pending:
            t.append("tokenizer: loading…", style="dim")
        elif self.decoder.is_text:
            t.append(f"text: {self.decoder.label}")
        else:
            t.append(f"showing {self.decoder.label}", style="yellow")
        t.append(f" · scale: {self.tokens_tab.scale_mode}")
        if self.data is not None and self.data.warnings:
            t.append(f" · {len(self.data.warnings)} warning(s)", style="yellow")
        if self.status_note:
            t.append(f" · {self.status_note}", style="dim")
        self.query_one("#status", Static).update(t)

    # ------------------------------------------------------------------ workers
    def _post(self, message: Any) -> None:
        if not get_current_worker().is_cancelled:
            self.post_message(message)

    @work(thread=True, exclusive=True, group="open")
    def open_trace(self) -> None:
        try:
            data = TraceData(self.path, max_steps=self.max_cached_steps)
            steps = data.steps()
        except ArcherError as e:
            self._post(msg.TraceFailed(e.message, e.hint))
            return
        except Exception as e:  # noqa: BLE001
            self._post(msg.TraceFailed(error_text(e)))
            return
        self._post(msg.TraceOpened(data, steps))

    @work(thread=True, exclusive=True, group="refresh")
    def refresh_steps(self) -> None:
        try:
            steps = self.data.steps()
        except Exception as e:  # noqa: BLE001 - the manifest vanished or became unreadable
            self._post(msg.WorkFailed("reload", error_text(e)))
            return
        self._post(msg.StepsRefreshed(steps))

    @work(thread=True, exclusive=True, group="decoder")
    def load_decoder(self, path: Path | None, note: str | None) -> None:
        self._post(msg.DecoderReady(load_decoder(path, self.no_decode, note)))

    @work(thread=True, exclusive=True, group="step")
    def load_step(self, step: int) -> None:
        try:
            table = self.data.step_table(step)
        except Exception as e:  # noqa: BLE001 - a corrupt or missing file: say so in the app
            self._post(msg.StepFailed(step, error_text(e)))
            return
        self._post(msg.StepLoaded(step, table))

    @work(thread=True, exclusive=True, group="response")
    def load_response(self, step: int, row: int) -> None:
        try:
            tokens = self.data.response(step, row)
            dec = self.decoder
            texts = dec.token_texts(tokens.ids)
            prompt = dec.decode(tokens.prompt_ids)
        except Exception as e:  # noqa: BLE001
            self._post(msg.ResponseFailed(step, row, error_text(e)))
            return
        self._post(msg.ResponseLoaded(step, row, tokens, texts, prompt, dec))

    @work(thread=True, exclusive=True, group="stats")
    def load_stats(self, step: int) -> None:
        try:
            stats = self.data.step_stats(step)
            dec = self.decoder
            texts = hit_texts(dec, [h for hits in stats.top.values() for h in hits])
        except Exception as e:  # noqa: BLE001
            self._post(msg.StatsFailed(step, error_text(e)))
            return
        self._post(msg.StatsLoaded(step, stats, texts))

    @work(thread=True, exclusive=True, group="find")
    def search_step(self, step: int, query: str) -> None:
        try:
            hits, total = self.data.search_step(step, query, self.decoder)
            texts = hit_texts(self.decoder, hits)
        except Exception as e:  # noqa: BLE001
            self._post(msg.WorkFailed("find in step", error_text(e)))
            return
        self._post(msg.StepSearchDone(step, query, hits, total, texts))

    @work(thread=True, exclusive=True, group="group")
    def load_group(self, step: int, uid: str) -> None:
        try:
            table = self.data.step_table(step)
            rows = [int(r) for r in table.group_rows(uid)]
            dec = self.decoder
            previews, prompt, tokens = {}, "", {}
            for r in rows:
                tok = self.data.response(step, r)
                previews[r] = visible(dec.decode(tok.ids[:PREVIEW_TOKENS]))
                infl = None if tok.influence is None else tok.influence[:COMPARE_TOKENS]
                tokens[r] = (dec.token_texts(tok.ids[:COMPARE_TOKENS]), infl, tok.n)
                if not prompt:
                    prompt = dec.decode(tok.prompt_ids)
        except Exception as e:  # noqa: BLE001
            self._post(msg.WorkFailed("group", error_text(e)))
            return
        self._post(msg.GroupLoaded(step, uid, rows, prompt, previews, tokens))

    @work(thread=True, exclusive=True, group="prompt")
    def load_prompt_history(self, prompt_ids: Any, prompt: str) -> None:
        worker = get_current_worker()
        try:
            history = self.data.prompt_history(prompt_ids, lambda done, total: not worker.is_cancelled)
        except Exception as e:  # noqa: BLE001
            self._post(msg.WorkFailed("follow prompt", error_text(e)))
            return
        self._post(msg.PromptHistoryLoaded(prompt, history))

    @work(thread=True, exclusive=True, group="across")
    def load_across(self) -> None:
        worker = get_current_worker()

        def progress(done: int, total: int) -> bool:
            if worker.is_cancelled:
                return False
            self.post_message(msg.AcrossProgress(done, total))
            return True

        try:
            emap = self.data.entropy_map(progress=progress)
        except Exception as e:  # noqa: BLE001
            self._post(msg.WorkFailed("across", error_text(e)))
            return
        self._post(msg.AcrossLoaded(emap))

    @work(thread=True, group="export")
    def export(self, path: Path, records: list[dict], columns: tuple[str, ...], what: str) -> None:
        try:
            n = export_file(path, records, columns, "csv")
        except Exception as e:  # noqa: BLE001 - a read-only directory, a full disk
            self.post_message(msg.WorkFailed("export", f"cannot write {path}: {error_text(e)}"))
            return
        self.post_message(msg.ExportDone(path, n, what))

    # ------------------------------------------------------------------ trace
    @on(msg.TraceFailed)
    def on_trace_failed(self, m: msg.TraceFailed) -> None:
        self.error = m.message
        self.query_one("#tabs").display = False
        panel = self.query_one("#error-panel", Static)
        panel.display = True
        t = Text()
        t.append("Cannot open this trace\n\n", style="bold red")
        t.append(m.message + "\n")
        if m.hint:
            t.append(f"\nHint: {m.hint}\n", style="dim")
        t.append("\nPress q to quit.", style="dim")
        panel.update(t)
        self.set_status("no trace")

    @on(msg.TraceOpened)
    @guarded
    def on_trace_opened(self, m: msg.TraceOpened) -> None:
        self.data, self.steps = m.data, m.steps
        path, note = resolve_tokenizer(self.tokenizer_arg, self.data.summary, self.data.dir)
        if self.no_decode:
            self.decoder_pending = False
        else:
            self.load_decoder(path, note)
        self.across_tab.set_steps(self.steps)
        for w in self.data.warnings:
            self.notify(w, title="trace warning", severity="warning", markup=False, timeout=8)
        if not self.steps:
            self.responses_tab.set_steps([], None)
            self.responses_tab.message("this trace has no steps yet (is the run still starting?)")
            self.tokens_tab.view.clear("no steps in this trace")
            self.set_status("")
            return
        numbers = self.step_numbers()
        step = numbers[-1]
        if self.initial_step is not None:
            if self.initial_step in numbers:
                step = self.initial_step
            else:
                self.notify(
                    f"step {self.initial_step} is not in this trace (steps {numbers[0]}..{numbers[-1]}); "
                    f"showing step {step}",
                    severity="error",
                    markup=False,
                    timeout=8,
                )
        self.responses_tab.set_steps(self.steps, step)
        self.select_step(step)
        self.responses_tab.responses.focus()

    @on(msg.StepsRefreshed)
    @guarded
    def on_steps_refreshed(self, m: msg.StepsRefreshed) -> None:
        new = len(m.steps) - len(self.steps)
        self.steps = m.steps
        self.responses_tab.set_steps(self.steps, self.step)
        self.across_tab.set_steps(self.steps)
        self.set_status()
        said = f"{new} new step{'s' if new != 1 else ''}" if new > 0 else "no new steps"
        self.notify(f"{said}; {len(self.steps)} in the trace", title="reloaded", markup=False)
        if self.step is None and self.steps:
            self.select_step(self.steps[-1].step)

    @on(msg.DecoderReady)
    @guarded
    def on_decoder_ready(self, m: msg.DecoderReady) -> None:
        self.decoder = m.decoder
        self.decoder_pending = False
        self.set_status()
        if not m.decoder.is_text and m.decoder.note and not self.no_decode:
            self.notify(
                f"no text decoding: {m.decoder.note}. Showing token ids.",
                severity="warning",
                markup=False,
                timeout=6,
            )
        if self.step is not None and self.row is not None:
            self.pending = (self.row, self.tokens_tab.cursor)
            self.load_response(self.step, self.row)
        if self.stats is not None and self.step is not None:
            self.request_stats(force=True)  # top-K texts in the new decoding
        self.group_tab.forget()
        if self.active_tab() == "group":
            self.action_group(switch=False)

    # ------------------------------------------------------------------ steps
    def select_step(self, step: int, row: int | None = None, pos: int | None = None) -> None:
        if self.data is None:
            return
        self.step = step
        self.table = None
        self.stats = None
        self.row = None
        self.pending = (row, pos)
        self.group_tab.forget()
        self.responses_tab.select_step(step)
        self.tokens_tab.set_loading(True)
        self.tokens_tab.set_stats(None)
        self.topk_tab.clear()
        if self.topk_tab.find_text():  # a step search follows the step
            self.post_message(msg.StepSearchWanted(self.topk_tab.find_text()))
        self.set_status("")
        self.load_step(step)
        if self.active_tab() == "topk" or self.tokens_tab.scale_mode != "response":
            self.request_stats()

    @on(msg.StepChosen)
    @guarded
    def on_step_chosen(self, m: msg.StepChosen) -> None:
        if m.step != self.step:
            self.select_step(m.step)

    @on(msg.StepLoaded)
    @guarded
    def on_step_loaded(self, m: msg.StepLoaded) -> None:
        if m.step != self.step:
            return
        self.table = m.table
        row, pos = self.pending
        self.responses_tab.show_table(m.table, keep_row=row)
        if m.table.n == 0:
            self.tokens_tab.clear(f"step {m.step} has no responses", prompt=f"step {m.step} has no responses")
            self.tokens = None
            self.token_table_tab.set_response(None, [], True, None, 0)
            return
        if row is None or not 0 <= row < m.table.n:
            row = self.responses_tab.first_row()
        if row is None:
            self.tokens_tab.clear("no response passes the filters")
            return
        self.select_response(row, pos)

    @on(msg.StepFailed)
    @guarded
    def on_step_failed(self, m: msg.StepFailed) -> None:
        if m.step != self.step:
            return
        self.responses_tab.show_failed(m.step, m.message)
        self.tokens_tab.clear(f"step {m.step} could not be read (see the responses tab)", prompt="")
        self.tokens = None
        self.notify(m.message, title=f"step {m.step}", severity="error", markup=False, timeout=8)

    # ------------------------------------------------------------------ responses
    def select_response(self, row: int, pos: int | None = None) -> None:
        if self.table is None or self.step is None:
            return
        self.row = row
        self.pending = (row, pos)
        self.tokens_tab.set_loading(True)
        self.load_response(self.step, row)
        self.responses_tab.select_row(row)
        if self.active_tab() == "group":
            self.action_group(switch=False)

    @on(msg.ResponseChosen)
    @guarded
    def on_response_chosen(self, m: msg.ResponseChosen) -> None:
        if m.row != self.row:
            self.select_response(m.row)
        if m.open:
            self.action_tab("tokens")

    @on(msg.ResponseLoaded)
    @guarded
    def on_response_loaded(self, m: msg.ResponseLoaded) -> None:
        if (m.step, m.row) != (self.step, self.row):
            return
        if m.decoder is not self.decoder and not self.decoder_pending:
            self.load_response(m.step, m.row)  # decoded with an older tokenizer: redo
            return
        self.tokens, self.texts = m.tokens, m.texts
        self.ids_mode = not m.decoder.is_text
        _, pos = self.pending
        self.pending = (None, None)
        tab = self.tokens_tab
        tab.show_response(m.tokens, m.texts, m.prompt, self.ids_mode, pos or 0)
        self.token_table_tab.set_response(m.tokens, m.texts, self.ids_mode, tab.keep(), tab.cursor)
        self.set_status("")
        if self.focused is None and self.active_tab() == "tokens":  # after a jump to another step
            self.query_one(self._FOCUS["tokens"]).focus()

    @on(msg.ResponseFailed)
    @guarded
    def on_response_failed(self, m: msg.ResponseFailed) -> None:
        if (m.step, m.row) != (self.step, self.row):
            return
        self.tokens_tab.clear(f"cannot read response {m.row} of step {m.step}: {m.message}")
        self.tokens = None
        self.notify(m.message, title=f"step {m.step} row {m.row}", severity="error", markup=False, timeout=8)

    # ------------------------------------------------------------------ tokens
    @on(msg.TokenKeepChanged)
    @guarded
    def on_token_keep_changed(self, m: msg.TokenKeepChanged) -> None:
        self.token_table_tab.set_keep(m.keep)

    @on(msg.CursorMoved)
    def on_cursor_moved(self, m: msg.CursorMoved) -> None:
        self.token_table_tab.cursor = m.pos

    # ------------------------------------------------------------------ step statistics (top-K, scales)
    def request_stats(self, force: bool = False) -> None:
        """Start reading the step's top-K/percentiles unless they are loaded or on their way
        (restarting a half-second read on every keypress would never let it finish)."""
        if self.step is None or self.data is None:
            return
        have = self.stats is not None and self.stats.step == self.step
        if not force and (have or self.stats_pending == self.step):
            return
        self.stats_pending = self.step
        self.topk_tab.set_loading()
        self.load_stats(self.step)

    @on(msg.StatsWanted)
    @guarded
    def on_stats_wanted(self, m: msg.StatsWanted) -> None:
        self.request_stats()

    @on(msg.StatsLoaded)
    @guarded
    def on_stats_loaded(self, m: msg.StatsLoaded) -> None:
        if m.step == self.stats_pending:
            self.stats_pending = None
        if m.step != self.step:
            return
        self.stats = m.stats
        self.topk_tab.show_stats(m.stats, m.texts, fidelity_notes(self.data.summary) if self.data else [])
        self.tokens_tab.set_stats(m.stats)

    @on(msg.StepSearchWanted)
    @guarded
    def on_step_search_wanted(self, m: msg.StepSearchWanted) -> None:
        if self.step is None or self.data is None:
            return
        if not m.query:
            self.topk_tab.show_extremes()
            return
        self.topk_tab.set_searching(m.query)
        self.search_step(self.step, m.query)

    @on(msg.StepSearchDone)
    @guarded
    def on_step_search_done(self, m: msg.StepSearchDone) -> None:
        if m.step == self.step:
            self.topk_tab.show_matches(m.step, m.query, m.hits, m.total, m.texts)
            self.topk_tab.table.focus()

    @on(msg.StatsFailed)
    @guarded
    def on_stats_failed(self, m: msg.StatsFailed) -> None:
        if m.step == self.stats_pending:
            self.stats_pending = None
        if m.step != self.step:
            return
        self.topk_tab.show_failed(m.step, m.message)

    # ------------------------------------------------------------------ group
    @on(msg.GroupLoaded)
    @guarded
    def on_group_loaded(self, m: msg.GroupLoaded) -> None:
        if m.step != self.step or self.table is None:
            return
        self.group_tab.show_group(self.table, m, self.row)

    # ------------------------------------------------------------------ across steps
    @on(msg.AcrossProgress)
    def on_across_progress(self, m: msg.AcrossProgress) -> None:
        self.across_tab.set_progress(m.done, m.total)

    @on(msg.AcrossLoaded)
    @guarded
    def on_across_loaded(self, m: msg.AcrossLoaded) -> None:
        self.across_tab.set_map(m.emap)

    @on(msg.PromptHistoryLoaded)
    @guarded
    def on_prompt_history_loaded(self, m: msg.PromptHistoryLoaded) -> None:
        self.across_tab.show_prompt(m.prompt, m.history)
        if self.active_tab() == "across":
            self.query_one("#prompt-steps").focus()

    @on(msg.ExportDone)
    def on_export_done(self, m: msg.ExportDone) -> None:
        self.notify(f"exported {m.count} {m.what} to {m.path}", title="exported", markup=False, timeout=8)

    @on(msg.WorkFailed)
    def on_work_failed(self, m: msg.WorkFailed) -> None:
        if m.what == "across":
            self.across_tab.set_error(m.message)
        self.notify(m.message, title=m.what, severity="error", markup=False, timeout=8)

    # ------------------------------------------------------------------ tabs
    def active_tab(self) -> str:
        return self.query_one("#tabs", TabbedContent).active

    @on(TabbedContent.TabActivated)
    @guarded
    def on_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        tab = self.active_tab()
        if tab == "topk":
            self.request_stats()
        elif tab == "group":
            self.action_group(switch=False)
        elif tab == "across" and self.data is not None and self.steps and self.across_tab.wanted():
            self.load_across()
        elif tab == "token-table" and self.token_table_tab.stale:
            self.token_table_tab.refresh_table(force=True)

    _FOCUS = {
        "responses": "#responses-table",
        "tokens": "#token-view",
        "token-table": "#token-table-view",
        "topk": "#topk-table",
        "group": "#group-table",
        "across": "#across-view",
    }

    def action_tab(self, tab: str) -> None:
        if self.error is not None:
            return
        self.query_one("#tabs", TabbedContent).active = tab
        self.query_one(self._FOCUS[tab]).focus()

    # ------------------------------------------------------------------ navigation
    @on(msg.JumpTo)
    @guarded
    def on_jump_to(self, m: msg.JumpTo) -> None:
        self.jump(m.step, m.row, m.pos)

    def jump(self, step: int, row: int | None, pos: int | None) -> None:
        """Open `row` of `step` in the tokens tab with the cursor on `pos`."""
        self.action_tab("tokens")
        if step != self.step or self.table is None:
            self.select_step(step, row, pos)
            # the token view is loading (not focusable): hold the keys nowhere rather than let focus
            # fall into the tab we came from (which would switch back to it); they return on load
            self.set_focus(None)
        elif row is not None and row == self.row and self.tokens is not None and self.tokens.row == row:
            if pos is not None:
                self.tokens_tab.move_to(pos)
        elif row is not None:
            self.select_response(row, pos)

    def jump_step(self, step: int) -> None:
        if step in self.step_numbers():
            self.action_tab("responses")
            if step != self.step:
                self.select_step(step)
        else:
            self.notify(f"step {step} is not in this trace", severity="error", markup=False)

    def jump_uid(self, uid: str) -> None:
        if self.table is None:
            self.notify("no step loaded", severity="error")
            return
        found = self.table.find_uid(uid)
        if found is None:
            self.notify(f"no uid {uid!r} in step {self.step}", severity="error", markup=False)
            return
        rows = self.table.group_rows(found)
        self.select_response(int(rows[0]))
        self.action_tab("group")

    def action_step(self, delta: int) -> None:
        numbers = self.step_numbers()
        if not numbers or self.step is None:
            return
        i = numbers.index(self.step) if self.step in numbers else 0
        j = min(max(0, i + delta), len(numbers) - 1)
        if j != i:
            self.select_step(numbers[j])

    def action_response(self, delta: int) -> None:
        row = self.responses_tab.neighbour(self.row, delta)
        if row is not None and row != self.row:
            self.select_response(row)

    def action_group(self, switch: bool = True) -> None:
        if self.table is None or self.row is None or self.step is None:
            if switch:
                self.notify("select a response first", severity="warning")
            return
        uid = str(self.table.uid[self.row])
        if switch:
            self.action_tab("group")
        if self.group_tab.has(self.step, uid):
            self.group_tab.select_row(self.table, self.row)  # already loaded: only move the cursor
            return
        self.group_tab.show_loading(uid)
        self.load_group(self.step, uid)

    def action_scale(self) -> None:
        self.tokens_tab.cycle_scale()
        self.set_status()

    def action_search(self) -> None:
        if self.active_tab() == "topk":  # the top-K tab searches every response of the step
            self.topk_tab.focus_find()
            return
        self.action_tab("tokens")
        self.tokens_tab.focus_search()

    def action_match(self, delta: int) -> None:
        tab = self.tokens_tab
        if tab.matches and self.active_tab() != "tokens":
            self.action_tab("tokens")
        tab.next_match(delta)

    def action_filters(self) -> None:
        if self.active_tab() == "responses":
            self.responses_tab.focus_filters()
        else:
            self.action_tab("tokens")
            self.tokens_tab.focus_filters()

    def action_accepted(self) -> None:
        self.responses_tab.cycle_accepted()

    @on(Input.Submitted)
    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in a filter bound applies it (it already is) and hands the keys back to the view,
        so `[ ] , .` typed next move steps and responses instead of landing in the field."""
        if event.input.has_class("bound"):
            event.stop()
            self.action_leave_input()

    def action_leave_input(self) -> None:
        if isinstance(self.focused, Input):
            self.query_one(self._FOCUS.get(self.active_tab(), "#responses-table")).focus()

    def action_refresh_steps(self) -> None:
        if self.data is not None:
            self.refresh_steps()

    def action_follow_prompt(self) -> None:
        """The current response's prompt in every step that sampled it (the across-steps tab)."""
        if self.tokens is None or self.data is None:
            self.notify("select a response first", severity="warning")
            return
        prompt = self.decoder.decode(self.tokens.prompt_ids) if self.decoder is not None else ""
        self.action_tab("across")
        prompt = printable(prompt).replace("\n", " ")
        self.across_tab.show_prompt_loading(prompt)
        self.load_prompt_history(self.tokens.prompt_ids.copy(), prompt)

    def action_toggle_steps(self) -> None:
        shown = self.responses_tab.toggle_steps()
        if self.active_tab() != "responses":
            self.action_tab("responses")
        if shown:
            self.responses_tab.steps.focus()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # ------------------------------------------------------------------ exports
    def action_export_tokens(self) -> None:
        tok = self.tokens
        if tok is None:
            self.notify("no response selected: nothing to export", severity="warning")
            return
        positions = self.token_table_tab.positions()
        texts = None if self.ids_mode else self.texts
        records = list(
            token_records(
                tok.step, tok.row, tok.meta.get("uid"), tok.ids, tok.entropy, tok.influence, texts, positions
            )
        )
        path = self.export_dir / f"archer_step{tok.step:06d}_row{tok.row}_tokens.csv"
        self.export(path, records, TOKEN_EXPORT_COLUMNS, "tokens")

    def action_export_responses(self) -> None:
        if self.table is None or self.step is None:
            self.notify("no step loaded: nothing to export", severity="warning")
            return
        table = self.table
        records = [response_record(table.record(int(r))) for r in self.responses_tab.order]
        path = self.export_dir / f"archer_step{self.step:06d}_responses.csv"
        self.export(path, records, RESPONSE_EXPORT_COLUMNS, "responses")


def hit_texts(dec, hits) -> dict[tuple[int, int], tuple[str, str, str]]:
    """(text before, hit text, text after) of each TokenHit, decoded as one window so a character
    split over tokens stays whole."""
    out = {}
    for h in hits:
        parts = dec.token_texts(list(h.context) + list(h.after))
        k = len(h.context)
        out[(h.row, h.pos)] = (
            "".join(parts[: k - h.length]),
            "".join(parts[k - h.length : k]),
            "".join(parts[k:]),
        )
    return out
