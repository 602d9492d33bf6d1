"""Run directories: where a training run keeps its config, metrics, checkpoints and trace.

Layout of `<run>/`:
  config.yaml      the resolved config (written before the first step)
  run.json         provenance: preset, overrides, archer version, git commit, host, start time
  metrics.jsonl    one JSON object per step (appended, flushed every step)
  checkpoints/     step_000010/ ... (model, tokenizer, optimizer, RNG, step)
  trace/           the per-token trace (see docs/trace-format.md)
  warmup/          the supervised warm-up checkpoint, when one ran
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from archer.errors import UsageError

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


def resolve_run_dir(cfg: Any, preset: str, out: str | os.PathLike | None) -> Path:
    """The run directory: --out if given, else <trainer.out_dir>/<run_name or preset-timestamp>."""
    if out is not None:
        return Path(out).expanduser()
    name = cfg.trainer.run_name or f"{preset}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.trainer.out_dir).expanduser() / name


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the archer source tree, if it is a git checkout."""
    here = path or Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def atomic_write_text(path: Path, text: str, fsync: bool = False) -> None:
    """Write a small text file through a temp file and rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        from archer.core.storage import disk_full_error

        full = disk_full_error(path, e) if isinstance(e, Exception) else None
        if full is not None and full is not e:
            raise full from e
        raise


def write_run_files(run_dir: Path, composed: Any, resumed: bool = False) -> None:
    """Write config.yaml and run.json (kept across resumes; resumes are appended to run.json)."""
    from archer import __version__

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, composed.to_yaml(resolve=True))
    info_path = run_dir / RUN_FILE
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            info = {}
    if not info or not resumed:
        info = {
            "preset": composed.preset,
            "preset_path": str(composed.preset_path) if composed.preset_path else None,
            "overrides": composed.overrides,
            "archer_version": __version__,
            "git_commit": git_commit(),
            "host": socket.gethostname(),
            "python": platform.python_version(),
            "started": now,
            "resumes": [],
        }
    else:
        info.setdefault("resumes", []).append({"at": now, "overrides": composed.overrides})
    atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")


def has_started(run_dir: Path) -> bool:
    """Whether a run got as far as training: a metrics line or a checkpoint (either engine)."""
    metrics = run_dir / METRICS_FILE
    if metrics.exists() and metrics.stat().st_size > 0:
        return True
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(ckpts.iterdir())


# What a start that failed before its first step may leave (both engines); nothing else is removed.
FAILED_START_ENTRIES = (
    CONFIG_FILE,
    RUN_FILE,
    METRICS_FILE,
    "data",
    "warmup",
    ".warmup.tmp",
    "model",
    ".model.tmp",
    "tokenizer",
    "trace",
    "checkpoints",
    "tensorboard",
    "verl_config.yaml",
)


def check_new_run_dir(run_dir: Path, resume: bool) -> list[str]:
    """Refuse to start a new run on top of an existing one, or to resume a run that is not there.

    A run whose start failed before its first step (a missing data file, a bad setting found in
    set-up) is not a run to protect: a new run replaces it, after removing what that start left
    (its config, provenance, synthetic data, warm-up, empty trace). Returns the names removed."""
    has_run = (run_dir / CONFIG_FILE).exists()
    if resume and not has_run:
        raise UsageError(
            f"nothing to resume in {run_dir} (no {CONFIG_FILE})",
            hint="pass the run directory of an earlier run with --out DIR",
        )
    if resume or not has_run:
        return []
    if has_started(run_dir):
        raise UsageError(
            f"{run_dir} already holds a run",
            hint=f"continue it with 'archer train --resume --out {run_dir}', or choose another --out",
        )
    removed = []
    for name in FAILED_START_ENTRIES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def check_run_dir_path(run_dir: Path) -> None:
    """--out must be a directory archer can create and write (checked before anything is written)."""
    check_writable_dir(run_dir, "--out")


def check_writable_dir(path: Path, label: str) -> None:
    """`path` (named `label` in the error: --out, trace.dir, ...) must be a directory archer can
    create and write: not a file, not under a file, not on a read-only mount or without permission."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{label} {path} is a file, not a directory", hint=f"choose a directory for {label}")
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise UsageError(
            f"{label} {path} is under a file ({existing})", hint=f"choose a directory for {label}"
        )
    if not os.access(existing, os.W_OK | os.X_OK) or _read_only(existing):
        reason = "a read-only file system" if _read_only(existing) else "no write permission"
        raise UsageError(
            f"{label} {path} cannot be written: {existing} is on {reason}"
            if reason.startswith("a ")
            else f"{label} {path} cannot be written: no write permission in {existing}",
            hint=f"choose another directory for {label}",
        )
    try:  # what the checks above cannot see (root on /proc or /sys): try it, leaving no trace
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UsageError(
            f"{label} {path} cannot be written: {e.strerror or e}",
            hint=f"choose another directory for {label}",
        ) from e


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
