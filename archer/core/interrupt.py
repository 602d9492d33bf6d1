"""Ctrl-C at a step boundary: the first SIGINT asks the loop to stop after the step under way.

A training loop wraps its steps in `with StopRequest() as stop:` and checks `stop.requested`
between steps: a checkpoint taken there is the same as a periodic one, so a resumed run equals an
uninterrupted run. A second SIGINT raises `KeyboardInterrupt` at once (the user insists), and the
loop then keeps only its last checkpoint. Outside the main thread signals cannot be caught, so
there the loop keeps Python's default behaviour.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class StopRequest:
    """A SIGINT handler for the life of a `with` block; `requested` turns true on the first Ctrl-C."""

    def __init__(self, on_first: Callable[[], None] | None = None):
        self.requested = False
        self._on_first = on_first
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._on_first is not None:
            self._on_first()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
