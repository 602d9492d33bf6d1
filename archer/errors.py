"""The errors archer knows how to explain.

Every error a user can cause or fix is an `ArcherError`: the CLI prints its message as one red
line and its hint below it, and exits with `exit_code` (2 for usage errors, 1 for runtime
errors). Anything else is a bug and gets the "unexpected error" treatment.
"""

from __future__ import annotations


class ArcherError(Exception):
    """A runtime error with a short message and an optional hint naming the next step."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class UsageError(ArcherError):
    """The command line or a config is wrong; the user must change what they typed."""

    exit_code = 2


class ConfigError(UsageError):
    """A preset, override or config value is invalid."""


class DataError(ArcherError):
    """Input data is missing or malformed."""


class TraceError(ArcherError):
    """A trace directory or file is missing, truncated or of an unknown schema."""


class Interrupted(ArcherError):
    """The user stopped the run (Ctrl-C); it can be continued with --resume."""

    exit_code = 130
