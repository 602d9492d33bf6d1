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
import socket
import subprocess
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


def check_new_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to start a new run on top of an existing one, or to resume a run that is not there."""
    has_run = (run_dir / CONFIG_FILE).exists()
    if resume and not has_run:
        raise UsageError(
            f"nothing to resume in {run_dir} (no {CONFIG_FILE})",
            hint="pass the run directory of an earlier run with --out DIR",
        )
    if not resume and has_run:
        raise UsageError(
            f"{run_dir} already holds a run",
            hint=f"continue it with 'archer train --resume --out {run_dir}', or choose another --out",
        )


def check_run_dir_path(run_dir: Path) -> None:
    """--out must be a directory archer can create and write: not a file, not under a file, not on a
    read-only mount (each said in one line, before anything is written)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file, not a directory", hint="choose a directory for the run")
    existing = run_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != run_dir and not existing.is_dir():
        raise UsageError(
            f"--out {run_dir} is under a file ({existing})", hint="choose a directory for the run"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "a read-only file system" if _read_only(existing) else "no write permission"
        raise UsageError(f"cannot write to {existing} ({reason})", hint="choose another --out directory")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
