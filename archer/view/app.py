"""The `archer view` app: tabs over one trace, workers for every read, messages for every result.

Reads (open the trace, a step, a response, a step's top-K, a group, the across-steps map, the
tokenizer) run in `@work(thread=True, exclusive=True)` workers that post dataclass messages
(`archer.view.messages`); handlers update the widgets and drop answers for a step or response
the user has already left. Problems the user can meet (a corrupt step, no tokenizer, an empty
response) are shown as text in the app; handlers never let an exception through.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Input, Label, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from archer.core.trace.schema import influence_contrast
from archer.errors import ArcherError
from archer.view import messages as msg
from archer.view.colors import SCALE_MODES, diverging_scale, finite_range, sequential_scale
from archer.view.data import (
    ACCEPT_FILTERS,
    RESPONSE_EXPORT_COLUMNS,
    TOKEN_EXPORT_COLUMNS,
    ResponseTable,
    ResponseTokens,
    StepRow,
    StepStats,
    TraceData,
    response_records,
    search_ids,
    search_tokens,
    token_filter_mask,
    token_order,
    token_records,
)
from archer.view.decode import Decoder, IdDecoder, load_decoder, resolve_tokenizer, visible
from archer.view.export import export_file
from archer.view.palette import ViewerCommands
from archer.view.widgets.across import AcrossSteps
from archer.view.widgets.filters import ResponseFilterBar, TokenFilterBar
from archer.view.widgets.heatmap import TokenView
from archer.view.widgets.help import HelpScreen
from archer.view.widgets.linetable import LineTable
from archer.view.widgets.prompt import PromptPanel
from archer.view.widgets.tables import (
    GroupTable,
    ResponsesTable,
    SortableTable,
    StepsTable,
    TokenTable,
    TopKTable,
)

TABS = ("responses", "tokens", "token-table", "topk", "group", "across")
PREVIEW_TOKENS = 160


def _error_text(e: BaseException) -> str:
    if isinstance(e, ArcherError):
        return e.message + (f" ({e.hint})" if e.hint else "")
    return f"{type(e).__name__}: {e}"


def guarded(fn: Callable) -> Callable:
    """Run a handler; an unexpected error becomes an in-app message instead of a crash."""

    @functools.wraps(fn)
    def wrapper(self: ArcherViewer, *args: Any, **kw: Any) -> Any:
        try:
            return fn(self, *args, **kw)
        except Exception as e:  # noqa: BLE001 - the app must stay up; say what went wrong
            self.log.error(f"{fn.__name__} failed", e)
            self.notify(
                f"{fn.__name__}: {_error_text(e)}",
                title="something went wrong",
                severity="error",
                markup=False,
                timeout=8,
            )
            return None

    return wrapper


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
        self.data: TraceData | None = None
        self.steps: list[StepRow] = []
        self.decoder: Decoder = (
            IdDecoder("loading the tokenizer…") if not no_decode else IdDecoder("--no-decode")
        )
        self.decoder_pending = not no_decode
        self.step: int | None = None
        self.table: ResponseTable | None = None
        self.order: np.ndarray = np.zeros(0, dtype=np.int64)
        self.row: int | None = None
        self.tokens: ResponseTokens | None = None
        self.texts: list[str] = []
        self.ids_mode = True
        self.stats: StepStats | None = None
        self.stats_texts: dict[tuple[int, int], str] = {}
        self.stats_pending: int | None = None
        self.pending: tuple[int | None, int | None] = (None, None)
        self.response_sort: tuple[str, bool] = ("row", False)
        self.response_filter = ResponseFilterBar.Changed("all", None, None)
        self.token_sort: tuple[str, bool] = ("position", False)
        self.entropy_range: tuple[float | None, float | None] = (None, None)
        self.influence_range: tuple[float | None, float | None] = (None, None)
        self.query = ""
        self.matches: list[tuple[int, int]] = []
        self.scale_index = 0
        self.group_key: tuple[int, str] | None = None
        self.group_msg: msg.GroupLoaded | None = None
        self.across_loaded = False
        self.token_table_stale = True
        self.status_note = ""
        self.error: str | None = None

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="responses", id="tabs"):
            with TabPane("1 Responses", id="responses"):
                with Horizontal():
                    with Vertical(id="steps-box"):
                        yield Label("steps", classes="box-title")
                        yield StepsTable(id="steps")
                    with Vertical(id="responses-box"):
                        yield ResponseFilterBar(id="response-filter")
                        yield Static(id="responses-message")
                        yield ResponsesTable(id="responses-table")
            with TabPane("2 Tokens", id="tokens"):
                yield PromptPanel(id="prompt")
                yield TokenFilterBar(id="token-filter")
                yield TokenView(id="token-view")
            with TabPane("3 Token table", id="token-table"):
                yield Static(id="token-table-note")
                yield TokenTable(id="token-table-view")
            with TabPane("4 Top-K", id="topk"):
                yield Static(id="topk-note")
                yield TopKTable(id="topk-table")
            with TabPane("5 Group", id="group"):
                yield Static(id="group-head")
                yield GroupTable(id="group-table")
            with TabPane("6 Across steps", id="across"):
                yield AcrossSteps(id="across-view")
        yield Static(id="error-panel")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = str(self.path)
        self.query_one("#error-panel").display = False
        self.set_status(f"opening {self.path} …")
        self.query_one("#token-view", TokenView).clear("loading…")
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
            contrast = influence_contrast(self.data.summary)
            if contrast is not None:  # what the influence scores were contrasted against
                t.append(f" · influence contrast: {contrast}")
        t.append(" · ")
        if self.decoder_pending:
            t.append("tokenizer: loading…", style="dim")
        elif self.decoder.is_text:
            t.append(f"text: {self.decoder.label}")
        else:
            t.append(f"showing {self.decoder.label}", style="yellow")
        t.append(f" · scale: {SCALE_MODES[self.scale_index]}")
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
            self._post(msg.TraceFailed(_error_text(e)))
            return
        self._post(msg.TraceOpened(data, steps))

    @work(thread=True, exclusive=True, group="refresh")
    def refresh_steps(self) -> None:
        try:
            steps = self.data.steps()
        except Exception as e:  # noqa: BLE001 - the manifest vanished or became unreadable
            self._post(msg.WorkFailed("reload", _error_text(e)))
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
            self._post(msg.StepFailed(step, _error_text(e)))
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
            self._post(msg.ResponseFailed(step, row, _error_text(e)))
            return
        self._post(msg.ResponseLoaded(step, row, tokens, texts, prompt, dec))

    @work(thread=True, exclusive=True, group="stats")
    def load_stats(self, step: int) -> None:
        try:
            stats = self.data.step_stats(step)
            dec = self.decoder
            texts = {
                (h.row, h.pos): dec.token_in_context(h.context) for hits in stats.top.values() for h in hits
            }
        except Exception as e:  # noqa: BLE001
            self._post(msg.StatsFailed(step, _error_text(e)))
            return
        self._post(msg.StatsLoaded(step, stats, texts))

    @work(thread=True, exclusive=True, group="group")
    def load_group(self, step: int, uid: str) -> None:
        try:
            table = self.data.step_table(step)
            rows = [int(r) for r in table.group_rows(uid)]
            dec = self.decoder
            previews, prompt = {}, ""
            for r in rows:
                tok = self.data.response(step, r)
                previews[r] = visible(dec.decode(tok.ids[:PREVIEW_TOKENS]))
                if not prompt:
                    prompt = dec.decode(tok.prompt_ids)
        except Exception as e:  # noqa: BLE001
            self._post(msg.WorkFailed("group", _error_text(e)))
            return
        self._post(msg.GroupLoaded(step, uid, rows, prompt, previews))

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
            self._post(msg.WorkFailed("across", _error_text(e)))
            return
        self._post(msg.AcrossLoaded(emap))

    @work(thread=True, group="export")
    def export(self, path: Path, records: list[dict], columns: tuple[str, ...], what: str) -> None:
        try:
            n = export_file(path, records, columns, "csv")
        except Exception as e:  # noqa: BLE001 - a read-only directory, a full disk
            self.post_message(msg.WorkFailed("export", f"cannot write {path}: {_error_text(e)}"))
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
        self.query_one("#across-view", AcrossSteps).set_steps(self.steps)
        for w in self.data.warnings:
            self.notify(w, title="trace warning", severity="warning", markup=False, timeout=8)
        if not self.steps:
            self.query_one("#steps", StepsTable).fill([], None)
            self._responses_message("this trace has no steps yet (is the run still starting?)")
            self.query_one("#token-view", TokenView).clear("no steps in this trace")
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
        self.query_one("#steps", StepsTable).fill(self.steps, step)
        self.select_step(step)
        self.query_one("#responses-table").focus()

    @on(msg.StepsRefreshed)
    @guarded
    def on_steps_refreshed(self, m: msg.StepsRefreshed) -> None:
        new = len(m.steps) - len(self.steps)
        self.steps = m.steps
        self.query_one("#steps", StepsTable).fill(self.steps, self.step)
        self.query_one("#across-view", AcrossSteps).set_steps(self.steps)
        self.across_loaded = False
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
            cur = self.query_one("#token-view", TokenView).model.cursor
            self.pending = (self.row, cur)
            self.load_response(self.step, self.row)
        if self.stats is not None and self.step is not None:
            self._request_stats(force=True)  # top-K texts in the new decoding
        self.group_key = None
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
        self.group_key = None
        self.query_one("#steps", StepsTable).select_step(step)
        self.query_one("#responses-table").loading = True
        self.query_one("#token-view").loading = True
        topk = self.query_one("#topk-table", TopKTable)
        topk.clear()
        topk.loading = False
        self.query_one("#topk-note", Static).update("")
        self.set_status("")
        self.load_step(step)
        if self.active_tab() == "topk" or SCALE_MODES[self.scale_index] != "response":
            self._request_stats()

    def _responses_message(self, text: str, style: str = "dim") -> None:
        w = self.query_one("#responses-message", Static)
        w.update(Text(text, style=style))
        w.display = bool(text)

    @on(msg.StepLoaded)
    @guarded
    def on_step_loaded(self, m: msg.StepLoaded) -> None:
        if m.step != self.step:
            return
        self.table = m.table
        self.query_one("#responses-table").loading = False
        row, pos = self.pending
        if m.table.n == 0:
            self.order = np.zeros(0, dtype=np.int64)
            self.query_one("#responses-table", ResponsesTable).show(m.table, self.order, None)
            self._responses_message(f"step {m.step} has no responses (0 rows)", "yellow")
            self.query_one("#token-view").loading = False
            self.query_one("#token-view", TokenView).clear(f"step {m.step} has no responses")
            self.query_one("#prompt", PromptPanel).clear(f"step {m.step} has no responses")
            self.tokens = None
            self._refresh_token_table()
            return
        self._apply_response_filter(keep_row=row)
        if row is None or not 0 <= row < m.table.n:
            row = int(self.order[0]) if len(self.order) else None
        if row is None:
            self.query_one("#token-view").loading = False
            self.query_one("#token-view", TokenView).clear("no response passes the filters")
            return
        self.select_response(row, pos)

    @on(msg.StepFailed)
    @guarded
    def on_step_failed(self, m: msg.StepFailed) -> None:
        if m.step != self.step:
            return
        for wid in ("#responses-table", "#token-view"):
            self.query_one(wid).loading = False
        self.query_one("#responses-table", ResponsesTable).clear()
        self._responses_message(f"cannot read step {m.step}: {m.message}", "red")
        self.query_one("#token-view", TokenView).clear(
            f"step {m.step} could not be read (see the responses tab)"
        )
        self.query_one("#prompt", PromptPanel).clear("")
        self.tokens = None
        self.notify(m.message, title=f"step {m.step}", severity="error", markup=False, timeout=8)

    # ------------------------------------------------------------------ responses
    def _apply_response_filter(self, keep_row: int | None = None) -> None:
        t = self.table
        if t is None:
            return
        f = self.response_filter
        key, desc = self.response_sort
        self.order = t.order(key, desc, f.accepted, f.reward_min, f.reward_max)
        table = self.query_one("#responses-table", ResponsesTable)
        table.set_sort(key, desc)
        table.show(t, self.order, keep_row if keep_row is not None else self.row)
        shown = f"{len(self.order)} of {t.n} responses"
        self.query_one("#response-count", Label).update(shown)
        if len(self.order) == 0:
            self._responses_message("no response passes the filters", "yellow")
        else:
            self._responses_message("")

    def select_response(self, row: int, pos: int | None = None) -> None:
        if self.table is None or self.step is None:
            return
        self.row = row
        self.pending = (row, pos)
        self.query_one("#token-view").loading = True
        self.load_response(self.step, row)
        table = self.query_one("#responses-table", ResponsesTable)
        try:
            table.move_cursor(row=table.get_row_index(str(row)))
        except KeyError:  # filtered out of the table: still shown in the tokens tab
            pass
        if self.active_tab() == "group":
            self.action_group(switch=False)

    @on(msg.ResponseLoaded)
    @guarded
    def on_response_loaded(self, m: msg.ResponseLoaded) -> None:
        if (m.step, m.row) != (self.step, self.row):
            return
        if m.decoder is not self.decoder and not self.decoder_pending:
            self.load_response(m.step, m.row)  # decoded with an older tokenizer: redo
            return
        view = self.query_one("#token-view", TokenView)
        view.loading = False
        self.tokens, self.texts = m.tokens, m.texts
        self.ids_mode = not m.decoder.is_text
        _, pos = self.pending
        self.pending = (None, None)
        self.query_one("#prompt", PromptPanel).show(m.tokens.meta, m.tokens.n, m.prompt, self.ids_mode)
        view.show(m.tokens, m.texts, self.ids_mode, pos or 0)
        self._apply_scales()
        self._apply_token_filter(refresh_table=False)
        self._apply_search()
        self._refresh_token_table()
        self.set_status("")

    @on(msg.ResponseFailed)
    @guarded
    def on_response_failed(self, m: msg.ResponseFailed) -> None:
        if (m.step, m.row) != (self.step, self.row):
            return
        view = self.query_one("#token-view", TokenView)
        view.loading = False
        view.clear(f"cannot read response {m.row} of step {m.step}: {m.message}")
        self.tokens = None
        self.notify(m.message, title=f"step {m.step} row {m.row}", severity="error", markup=False, timeout=8)

    @on(LineTable.Highlighted, "#steps")
    @guarded
    def on_step_highlighted(self, event: LineTable.Highlighted) -> None:
        if event.index != event.table.cursor_row:
            return  # a stale event: the cursor has moved on since
        step = int(event.key)
        if step != self.step:
            self.select_step(step)

    @on(LineTable.Selected, "#steps")
    def on_step_selected(self, event: LineTable.Selected) -> None:
        self.query_one("#responses-table").focus()

    @on(LineTable.Highlighted, "#responses-table")
    @guarded
    def on_response_highlighted(self, event: LineTable.Highlighted) -> None:
        if event.index != event.table.cursor_row:
            return
        row = int(event.key)
        if row != self.row:
            self.select_response(row)

    @on(LineTable.Selected, "#responses-table")
    @guarded
    def on_response_selected(self, event: LineTable.Selected) -> None:
        row = int(event.key)
        if row != self.row:
            self.select_response(row)
        self.action_tab("tokens")

    @on(SortableTable.SortChanged, "#responses-table")
    @guarded
    def on_response_sort(self, event: SortableTable.SortChanged) -> None:
        self.response_sort = (event.key, event.descending)
        self._apply_response_filter()

    @on(ResponseFilterBar.Changed)
    @guarded
    def on_response_filter(self, event: ResponseFilterBar.Changed) -> None:
        self.response_filter = event
        self._apply_response_filter()

    # ------------------------------------------------------------------ tokens: scales, filters, search
    def _apply_scales(self) -> None:
        tok = self.tokens
        if tok is None:
            return
        mode = SCALE_MODES[self.scale_index]
        view = self.query_one("#token-view", TokenView)
        st = self.stats if self.stats is not None and self.stats.step == self.step else None
        if mode == "response" or st is None:
            lo, hi = finite_range(tok.entropy)
            ilo, ihi = finite_range(tok.influence)
            label = mode if mode == "response" else f"{mode} (loading…)"
            lim = max(abs(ilo), abs(ihi)) if math.isfinite(ilo) else math.nan
            view.set_scales(sequential_scale(lo, hi, label), diverging_scale(lim, label))
            if mode != "response":
                self._request_stats()
        elif mode == "step":
            view.set_scales(
                sequential_scale(st.entropy_min, st.entropy_max, mode),
                diverging_scale(st.influence_absmax, mode),
            )
        else:
            view.set_scales(
                sequential_scale(st.entropy_p05, st.entropy_p95, mode),
                diverging_scale(st.influence_abs_p95, mode),
            )

    def _request_stats(self, force: bool = False) -> None:
        """Start reading the step's top-K/percentiles unless they are loaded or on their way
        (restarting a half-second read on every keypress would never let it finish)."""
        if self.step is None or self.data is None:
            return
        have = self.stats is not None and self.stats.step == self.step
        if not force and (have or self.stats_pending == self.step):
            return
        self.stats_pending = self.step
        self.query_one("#topk-table").loading = True
        self.load_stats(self.step)

    def token_keep(self) -> np.ndarray | None:
        if self.tokens is None:
            return None
        return token_filter_mask(
            self.tokens.entropy, self.tokens.influence, self.entropy_range, self.influence_range
        )

    def _apply_token_filter(self, refresh_table: bool = True) -> None:
        self.query_one("#token-view", TokenView).set_keep(self.token_keep())
        if refresh_table:
            self._refresh_token_table()

    def _apply_search(self) -> None:
        tok = self.tokens
        if tok is None:
            self.matches = []
        elif self.ids_mode:
            self.matches = search_ids(tok.ids, self.query)
        else:
            self.matches = search_tokens(self.texts, self.query)
        self.query_one("#token-view", TokenView).set_matches(self.matches)
        label = "" if not self.query else f"{len(self.matches)} match{'es' if len(self.matches) != 1 else ''}"
        self.query_one("#search-count", Label).update(label)

    @on(TokenFilterBar.Changed)
    @guarded
    def on_token_filter(self, event: TokenFilterBar.Changed) -> None:
        self.entropy_range, self.influence_range = event.entropy, event.influence
        self._apply_token_filter()

    @on(TokenFilterBar.SearchChanged)
    @guarded
    def on_search(self, event: TokenFilterBar.SearchChanged) -> None:
        self.query = event.query
        self._apply_search()
        if event.submitted:
            view = self.query_one("#token-view", TokenView)
            view.focus()
            if self.matches:
                cur = view.model.cursor
                first = next((a for a, _ in self.matches if a >= cur), self.matches[0][0])
                view.move_to(first, force=True)

    # ------------------------------------------------------------------ token table
    def _refresh_token_table(self, force: bool = False) -> None:
        """Refill the token table now if its tab is showing, else when it is next shown."""
        if not force and self.active_tab() != "token-table":
            self.token_table_stale = True
            return
        self.token_table_stale = False
        table = self.query_one("#token-table-view", TokenTable)
        note = self.query_one("#token-table-note", Static)
        tok = self.tokens
        if tok is None:
            table.clear()
            note.update(Text("no response selected", style="dim"))
            return
        key, desc = self.token_sort
        keep = self.token_keep()
        positions = token_order(tok, key, desc, keep)
        table.set_sort(key, desc)
        cur = self.query_one("#token-view", TokenView).model.cursor
        table.show(tok, self.texts, positions, self.ids_mode, cur)
        t = Text(
            f"step {tok.step} row {tok.row}: {len(positions)} of {tok.n} tokens "
            f"sorted by {key} {'descending' if desc else 'ascending'}"
        )
        if keep is not None and not keep.all():
            t.append("  (entropy/influence filters on)", style="yellow")
        note.update(t)

    @on(SortableTable.SortChanged, "#token-table-view")
    @guarded
    def on_token_sort(self, event: SortableTable.SortChanged) -> None:
        self.token_sort = (event.key, event.descending)
        self._refresh_token_table()

    @on(LineTable.Selected, "#token-table-view")
    @guarded
    def on_token_row_selected(self, event: LineTable.Selected) -> None:
        pos = int(event.key)
        self.action_tab("tokens")
        self.query_one("#token-view", TokenView).move_to(pos, force=True)

    # ------------------------------------------------------------------ top-K
    @on(msg.StatsLoaded)
    @guarded
    def on_stats_loaded(self, m: msg.StatsLoaded) -> None:
        if m.step == self.stats_pending:
            self.stats_pending = None
        if m.step != self.step:
            return
        self.stats, self.stats_texts = m.stats, m.texts
        table = self.query_one("#topk-table", TopKTable)
        table.loading = False
        table.show(m.stats.top, m.texts)
        s = m.stats
        note = Text(f"step {s.step}: {s.tokens} tokens; ")
        if s.tokens == 0:
            note = Text(f"step {s.step} has no tokens: nothing to rank", style="yellow")
        elif s.influence_tokens == 0:
            note.append("no influence captured in this step (entropy only)", style="dim")
        else:
            note.append(f"influence captured for {s.influence_tokens} tokens")
        note.append("   enter: open the token", style="dim")
        self.query_one("#topk-note", Static).update(note)
        if SCALE_MODES[self.scale_index] != "response":
            self._apply_scales()

    @on(msg.StatsFailed)
    @guarded
    def on_stats_failed(self, m: msg.StatsFailed) -> None:
        if m.step == self.stats_pending:
            self.stats_pending = None
        if m.step != self.step:
            return
        self.query_one("#topk-table").loading = False
        self.query_one("#topk-note", Static).update(
            Text(f"cannot rank step {m.step}: {m.message}", style="red")
        )

    @on(LineTable.Selected, "#topk-table")
    @guarded
    def on_topk_selected(self, event: LineTable.Selected) -> None:
        hit = self.query_one("#topk-table", TopKTable).hits.get(event.key)
        if hit is not None and self.step is not None:
            self.jump(self.step, hit.row, hit.pos)

    # ------------------------------------------------------------------ group
    @on(msg.GroupLoaded)
    @guarded
    def on_group_loaded(self, m: msg.GroupLoaded) -> None:
        if m.step != self.step or self.table is None:
            return
        self.group_key = (m.step, m.uid)
        self.group_msg = m
        acc = self.table.cols["accepted"][m.rows] if m.rows else np.zeros(0)
        head = Text()
        head.append("group ", style="bold")
        head.append(m.uid, style="bold cyan")
        head.append(
            f"  step {m.step} · {len(m.rows)} responses · {int((acc == 1).sum())} accepted, "
            f"{int((acc == 0).sum())} rejected, {int(np.isnan(acc).sum())} not filtered\n"
        )
        head.append("prompt ", style="bold")
        head.append(m.prompt or "(empty)")
        self.query_one("#group-head", Static).update(head)
        self.query_one("#group-table", GroupTable).show(self.table, m.rows, m.previews, self.row)

    @on(LineTable.Selected, "#group-table")
    @guarded
    def on_group_selected(self, event: LineTable.Selected) -> None:
        if self.step is not None:
            self.jump(self.step, int(event.key), None)

    # ------------------------------------------------------------------ across steps
    @on(msg.AcrossProgress)
    def on_across_progress(self, m: msg.AcrossProgress) -> None:
        self.query_one("#across-view", AcrossSteps).set_progress(m.done, m.total)

    @on(msg.AcrossLoaded)
    @guarded
    def on_across_loaded(self, m: msg.AcrossLoaded) -> None:
        self.query_one("#across-view", AcrossSteps).set_map(m.emap)

    @on(msg.ExportDone)
    def on_export_done(self, m: msg.ExportDone) -> None:
        self.notify(f"exported {m.count} {m.what} to {m.path}", title="exported", markup=False, timeout=8)

    @on(msg.WorkFailed)
    def on_work_failed(self, m: msg.WorkFailed) -> None:
        if m.what == "across":
            self.across_loaded = False
            self.query_one("#across-view", AcrossSteps).set_error(m.message)
        self.notify(m.message, title=m.what, severity="error", markup=False, timeout=8)

    # ------------------------------------------------------------------ tabs
    def active_tab(self) -> str:
        return self.query_one("#tabs", TabbedContent).active

    @on(TabbedContent.TabActivated)
    @guarded
    def on_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        tab = self.active_tab()
        if tab == "topk":
            self._request_stats()
        elif tab == "group":
            self.action_group(switch=False)
        elif tab == "across" and not self.across_loaded and self.data is not None and self.steps:
            self.across_loaded = True
            self.load_across()
        elif tab == "token-table" and self.token_table_stale:
            self._refresh_token_table(force=True)

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

    # ------------------------------------------------------------------ navigation actions
    def jump(self, step: int, row: int | None, pos: int | None) -> None:
        """Open `row` of `step` in the tokens tab with the cursor on `pos`."""
        self.action_tab("tokens")
        if step != self.step or self.table is None:
            self.select_step(step, row, pos)
        elif row is not None and row == self.row and self.tokens is not None and self.tokens.row == row:
            if pos is not None:
                self.query_one("#token-view", TokenView).move_to(pos, force=True)
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
        if self.table is None or not len(self.order):
            return
        where = np.flatnonzero(self.order == self.row)
        i = int(where[0]) if len(where) else -1
        j = min(max(0, i + delta), len(self.order) - 1)
        if int(self.order[j]) != self.row:
            self.select_response(int(self.order[j]))

    def action_group(self, switch: bool = True) -> None:
        if self.table is None or self.row is None or self.step is None:
            if switch:
                self.notify("select a response first", severity="warning")
            return
        uid = str(self.table.uid[self.row])
        if switch:
            self.action_tab("group")
        if self.group_key == (self.step, uid) and self.group_msg is not None:
            g = self.group_msg  # already loaded: only move the cursor to the current response
            self.query_one("#group-table", GroupTable).show(self.table, g.rows, g.previews, self.row)
            return
        self.query_one("#group-head", Static).update(Text(f"loading group {uid} …", style="dim"))
        self.load_group(self.step, uid)

    def action_scale(self) -> None:
        self.scale_index = (self.scale_index + 1) % len(SCALE_MODES)
        self._apply_scales()
        self.set_status()

    def action_search(self) -> None:
        self.action_tab("tokens")
        self.query_one("#search", Input).focus()

    def action_match(self, delta: int) -> None:
        if not self.matches:
            if self.query:
                self.notify(f"no match for {self.query!r}", severity="warning", markup=False)
            return
        view = self.query_one("#token-view", TokenView)
        cur = view.model.cursor
        starts = [a for a, _ in self.matches]
        if delta > 0:
            nxt = next((a for a in starts if a > cur), starts[0])
        else:
            nxt = next((a for a in reversed(starts) if a < cur), starts[-1])
        if self.active_tab() != "tokens":
            self.action_tab("tokens")
        view.move_to(nxt, force=True)

    def action_filters(self) -> None:
        if self.active_tab() == "responses":
            self.query_one("#reward-min", Input).focus()
        else:
            self.action_tab("tokens")
            self.query_one("#ent-min", Input).focus()

    def action_accepted(self) -> None:
        cur = self.response_filter.accepted
        nxt = ACCEPT_FILTERS[(ACCEPT_FILTERS.index(cur) + 1) % len(ACCEPT_FILTERS)]
        self.query_one("#response-filter", ResponseFilterBar).set_accepted(nxt)

    def action_leave_input(self) -> None:
        if isinstance(self.focused, Input):
            self.query_one(self._FOCUS.get(self.active_tab(), "#responses-table")).focus()

    def action_refresh_steps(self) -> None:
        if self.data is not None:
            self.refresh_steps()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # ------------------------------------------------------------------ exports
    def action_export_tokens(self) -> None:
        tok = self.tokens
        if tok is None:
            self.notify("no response selected: nothing to export", severity="warning")
            return
        key, desc = self.token_sort
        positions = token_order(tok, key, desc, self.token_keep())
        records = list(token_records(tok, None if self.ids_mode else self.texts, positions))
        path = self.export_dir / f"archer_step{tok.step:06d}_row{tok.row}_tokens.csv"
        self.export(path, records, TOKEN_EXPORT_COLUMNS, "tokens")

    def action_export_responses(self) -> None:
        if self.table is None or self.step is None:
            self.notify("no step loaded: nothing to export", severity="warning")
            return
        records = list(response_records(self.table, self.order))
        path = self.export_dir / f"archer_step{self.step:06d}_responses.csv"
        self.export(path, records, RESPONSE_EXPORT_COLUMNS, "responses")
