"""A full disk is a user's problem to fix, so it gets one clear line, not a traceback.

`disk_full_error(path, err)` turns a failed write into `DiskFullError` naming the path and the
space left there when the failure is a full disk or quota: an `OSError` with ENOSPC/EDQUOT, or a
library error that wraps one (safetensors and pyarrow keep the OS text "No space left on device";
torch.save says only "file write failed", so that one counts when the disk is indeed nearly full).
The caller raises it `from err`, so the original error stays attached (ARCHER_DEBUG=1 shows it).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from archer.errors import ArcherError

NEARLY_FULL_BYTES = 64 * 2**20
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")
_TORCH_TEXTS = ("file write failed", "unexpected pos")


class DiskFullError(ArcherError):
    """No space (or quota) left where archer was writing; free some and resume."""


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system of `path` (or of its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p.parent != p:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def is_disk_full(err: BaseException, path: Path) -> bool:
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        text = str(e)
        if any(t in text for t in _FULL_TEXTS):
            return True
        if isinstance(e, RuntimeError) and any(t in text for t in _TORCH_TEXTS):
            free = free_bytes(path)
            return free is not None and free < NEARLY_FULL_BYTES
    return False


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def disk_full_error(
    path: Path, err: BaseException, cls: type[DiskFullError] = DiskFullError
) -> DiskFullError | None:
    """The one-line error for `err` raised while writing `path`, or None if the disk is not full."""
    if isinstance(err, DiskFullError):
        return err
    if not is_disk_full(err, path):
        return None
    return cls(
        f"no space left on the device writing {path} ({human(free_bytes(path))} free there)",
        hint="free some space (or write elsewhere), then continue with --resume; "
        "the last complete checkpoint is kept",
    )


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Raise `DiskFullError` (chained to the original) when the block fails on a full disk."""
    try:
        yield
    except Exception as e:
        full = disk_full_error(path, e)
        if full is None or full is e:
            raise
        raise full from e
