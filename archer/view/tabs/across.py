"""Tab 6: trends over the steps (from the manifest) and the step x position entropy map."""

from __future__ import annotations

from collections.abc import Sequence

from textual.widgets import TabPane

from archer.view.model import EntropyMap, StepRow
from archer.view.widgets.across import AcrossSteps


class AcrossTab(TabPane):
    """The map is computed once per step list, when the tab is first shown (`wanted`)."""

    def __init__(self, title: str, **kw) -> None:
        super().__init__(title, **kw)
        self.loaded = False  # the map is computed or on its way

    def compose(self):
        yield AcrossSteps(id="across-view")

    @property
    def view(self) -> AcrossSteps:
        return self.query_one("#across-view", AcrossSteps)

    def set_steps(self, rows: Sequence[StepRow]) -> None:
        self.view.set_steps(rows)
        self.loaded = False

    def wanted(self) -> bool:
        """Whether the map should be computed now (marks it as on its way)."""
        if self.loaded:
            return False
        self.loaded = True
        return True

    def set_progress(self, done: int, total: int) -> None:
        self.view.set_progress(done, total)

    def set_map(self, emap: EntropyMap) -> None:
        self.view.set_map(emap)

    def set_error(self, message: str) -> None:
        self.loaded = False
        self.view.set_error(message)
