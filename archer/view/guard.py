"""Handlers that never crash the viewer: an unexpected error becomes an in-app notification."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from archer.errors import ArcherError


def error_text(e: BaseException) -> str:
    """One line for the user: an ArcherError's message and hint, else the exception's type and text."""
    if isinstance(e, ArcherError):
        return e.message + (f" ({e.hint})" if e.hint else "")
    return f"{type(e).__name__}: {e}"


def guarded(fn: Callable) -> Callable:
    """Run a handler of an App or widget; an unexpected error is logged and notified, not raised."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(self, *args, **kw)
        except Exception as e:  # noqa: BLE001 - the app must stay up; say what went wrong
            self.log.error(f"{fn.__name__} failed", e)
            self.notify(
                f"{fn.__name__}: {error_text(e)}",
                title="something went wrong",
                severity="error",
                markup=False,
                timeout=8,
            )
            return None

    return wrapper
