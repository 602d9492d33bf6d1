"""Tab 2: one response's entropy and influence heatmaps, with colour scale, filters and search."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from textual import on
from textual.widgets import Input, Label, TabPane

from archer.view import messages as msg
from archer.view.colors import SCALE_MODES, diverging_scale, finite_range, sequential_scale
from archer.view.guard import guarded
from archer.view.model import ResponseTokens, StepStats, search_ids, search_tokens, token_filter_mask
from archer.view.widgets.filters import TokenFilterBar
from archer.view.widgets.heatmap import TokenView
from archer.view.widgets.prompt import PromptPanel


class TokensTab(TabPane):
    """Owns the colour scale mode, the entropy/influence ranges and the search of the shown response."""

    def __init__(self, title: str, **kw) -> None:
        super().__init__(title, **kw)
        self.tokens: ResponseTokens | None = None
        self.texts: list[str] = []
        self.ids_mode = True
        self.stats: StepStats | None = None  # the step's, for the step and percentile scales
        self.scale_index = 0
        self.entropy_range: tuple[float | None, float | None] = (None, None)
        self.influence_range: tuple[float | None, float | None] = (None, None)
        self.query = ""
        self.matches: list[tuple[int, int]] = []

    def compose(self):
        yield PromptPanel(id="prompt")
        yield TokenFilterBar(id="token-filter")
        yield TokenView(id="token-view")

    @property
    def view(self) -> TokenView:
        return self.query_one("#token-view", TokenView)

    @property
    def scale_mode(self) -> str:
        return SCALE_MODES[self.scale_index]

    @property
    def cursor(self) -> int:
        return self.view.model.cursor

    # ---- from the app -------------------------------------------------------------------------

    def set_loading(self, loading: bool) -> None:
        self.view.loading = loading

    def clear(self, message: str, prompt: str | None = None) -> None:
        """No response to show: say why (and in the prompt panel too, when `prompt` is given)."""
        self.tokens = None
        self.view.loading = False
        self.view.clear(message)
        if prompt is not None:
            self.query_one("#prompt", PromptPanel).clear(prompt)

    def show_response(
        self, tokens: ResponseTokens, texts: Sequence[str], prompt: str, ids_mode: bool, pos: int
    ) -> None:
        self.view.loading = False
        self.tokens, self.texts, self.ids_mode = tokens, list(texts), ids_mode
        self.query_one("#prompt", PromptPanel).show(tokens.meta, tokens.n, prompt, ids_mode)
        self.view.show(tokens, texts, ids_mode, pos)
        self.apply_scales()
        self.view.set_keep(self.keep())
        self.apply_search()

    def set_stats(self, stats: StepStats | None) -> None:
        self.stats = stats
        if stats is not None and self.scale_mode != "response":
            self.apply_scales()

    def move_to(self, pos: int) -> None:
        self.view.move_to(pos, force=True)

    # ---- colour scale -------------------------------------------------------------------------

    def cycle_scale(self) -> None:
        self.scale_index = (self.scale_index + 1) % len(SCALE_MODES)
        self.apply_scales()

    def apply_scales(self) -> None:
        tok = self.tokens
        if tok is None:
            return
        mode = self.scale_mode
        st = self.stats if self.stats is not None and self.stats.step == tok.step else None
        if mode == "response" or st is None:
            lo, hi = finite_range(tok.entropy)
            ilo, ihi = finite_range(tok.influence)
            label = mode if mode == "response" else f"{mode} (loading…)"
            lim = max(abs(ilo), abs(ihi)) if math.isfinite(ilo) else math.nan
            self.view.set_scales(sequential_scale(lo, hi, label), diverging_scale(lim, label))
            if mode != "response":
                self.post_message(msg.StatsWanted())
        elif mode == "step":
            self.view.set_scales(
                sequential_scale(st.entropy_min, st.entropy_max, mode),
                diverging_scale(st.influence_absmax, mode),
            )
        else:
            self.view.set_scales(
                sequential_scale(st.entropy_p05, st.entropy_p95, mode),
                diverging_scale(st.influence_abs_p95, mode),
            )

    # ---- filters and search -------------------------------------------------------------------

    def keep(self) -> np.ndarray | None:
        """Tokens inside the entropy and influence ranges (None without a response)."""
        if self.tokens is None:
            return None
        return token_filter_mask(
            self.tokens.entropy, self.tokens.influence, self.entropy_range, self.influence_range
        )

    def apply_search(self) -> None:
        tok = self.tokens
        if tok is None:
            self.matches = []
        elif self.ids_mode:
            self.matches = search_ids(tok.ids, self.query)
        else:
            self.matches = search_tokens(self.texts, self.query)
        self.view.set_matches(self.matches)
        label = "" if not self.query else f"{len(self.matches)} match{'es' if len(self.matches) != 1 else ''}"
        self.query_one("#search-count", Label).update(label)

    def next_match(self, delta: int) -> None:
        """Cursor to the next (delta > 0) or previous match, wrapping around."""
        if not self.matches:
            if self.query:
                self.notify(f"no match for {self.query!r}", severity="warning", markup=False)
            return
        cur = self.cursor
        starts = [a for a, _ in self.matches]
        if delta > 0:
            nxt = next((a for a in starts if a > cur), starts[0])
        else:
            nxt = next((a for a in reversed(starts) if a < cur), starts[-1])
        self.move_to(nxt)

    def focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def focus_filters(self) -> None:
        self.query_one("#ent-min", Input).focus()

    @on(TokenFilterBar.Changed)
    @guarded
    def _filter_changed(self, event: TokenFilterBar.Changed) -> None:
        event.stop()
        self.entropy_range, self.influence_range = event.entropy, event.influence
        keep = self.keep()
        self.view.set_keep(keep)
        self.post_message(msg.TokenKeepChanged(keep))

    @on(TokenFilterBar.SearchChanged)
    @guarded
    def _search_changed(self, event: TokenFilterBar.SearchChanged) -> None:
        event.stop()
        self.query = event.query
        self.apply_search()
        if event.submitted:
            self.view.focus()
            if self.matches:
                cur = self.cursor
                first = next((a for a, _ in self.matches if a >= cur), self.matches[0][0])
                self.move_to(first)
