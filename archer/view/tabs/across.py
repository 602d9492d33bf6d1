"""Tab 6: trends over the steps (from the manifest), the step x position entropy map, and one
prompt followed across the steps that sampled it (`p`)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import on
from textual.widgets import Static, TabPane

from archer.view import messages as msg
from archer.view.model import EntropyMap, PromptStep, StepRow
from archer.view.widgets.across import AcrossSteps
from archer.view.widgets.linetable import LineTable
from archer.view.widgets.tables import PromptStepsTable


class AcrossTab(TabPane):
    """The map is computed once per step list, when the tab is first shown (`wanted`)."""

    def __init__(self, title: str, **kw) -> None:
        super().__init__(title, **kw)
        self.loaded = False  # the map is computed or on its way

    def compose(self):
        yield AcrossSteps(id="across-view")
        yield Static(id="prompt-head")
        yield PromptStepsTable(id="prompt-steps")

    def on_mount(self) -> None:
        self.query_one("#prompt-steps").display = False
        self.query_one("#prompt-head", Static).update(
            Text("p: follow the current response's prompt across steps", style="dim")
        )

    def show_prompt_loading(self, prompt: str) -> None:
        head = Text("finding the prompt ", style="dim")
        head.append(prompt[:80], style="bold")
        head.append(" in every step …", style="dim")
        self.query_one("#prompt-head", Static).update(head)

    def show_prompt(self, prompt: str, history: Sequence[PromptStep]) -> None:
        head = Text("prompt ", style="bold")
        head.append(prompt[:80] + ("…" if len(prompt) > 80 else ""))
        n = len(history)
        head.append(f"  sampled in {n} step{'s' if n != 1 else ''}", style="bold")
        head.append("  (enter: open its responses at that step)", style="dim")
        self.query_one("#prompt-head", Static).update(head)
        table = self.query_one("#prompt-steps", PromptStepsTable)
        table.display = True
        table.show(history)

    @on(LineTable.Selected, "#prompt-steps")
    def _selected(self, event: LineTable.Selected) -> None:
        event.stop()
        h = self.query_one("#prompt-steps", PromptStepsTable).history.get(event.key)
        if h is not None:
            self.post_message(msg.JumpTo(h.step, h.rows[0], None))

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
