"""Command palette (ctrl+p): jump to a step or a uid, and the viewer's commands by name."""

from __future__ import annotations

import re
from functools import partial

from rich.text import Text
from textual.command import DiscoveryHit, Hit, Hits, Provider

_STEP = re.compile(r"^(?:step\s*)?(\d+)$", re.IGNORECASE)
_UID = re.compile(r"^(?:uid|group)\s+(.+)$", re.IGNORECASE)
MAX_UID_HITS = 20


class ViewerCommands(Provider):
    """Typing `12` or `step 12` offers that step; `uid abc` (or part of a uid) offers groups."""

    async def discover(self) -> Hits:
        for name, help_text, callback in self.app.palette_commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        app = self.app
        q = query.strip()
        m = _STEP.match(q)
        if m:
            step = int(m.group(1))
            if step in app.step_numbers():
                yield Hit(
                    1.0, Text(f"Jump to step {step}"), partial(app.jump_step, step), help="open this step"
                )
        elif q.lower().startswith("step"):
            for step in app.step_numbers()[:MAX_UID_HITS]:
                yield Hit(0.5, Text(f"Jump to step {step}"), partial(app.jump_step, step))
        m = _UID.match(q)
        needle = m.group(1).strip() if m else q
        if needle:
            shown = 0
            for uid in app.current_uids():
                if needle in uid:
                    score = 1.0 if uid == needle else 0.8 if uid.startswith(needle) else 0.6
                    yield Hit(
                        score,
                        Text(f"Jump to uid {uid}"),
                        partial(app.jump_uid, uid),
                        help="group view of this prompt in the current step",
                    )
                    shown += 1
                    if shown >= MAX_UID_HITS:
                        break
        matcher = self.matcher(query)
        for name, help_text, callback in app.palette_commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
