"""Engines run a composed config. Both share archer.core (algorithms, rewards, data, traces).

- local: one process, CPU or one GPU, HF generate rollouts (archer.core.engines.local)
- verl:  Ray + vLLM + FSDP through verl 0.9.1, entered as a plugin (archer.core.engines.verl)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_engine(composed: Any, run_dir: Path, resume: bool = False, reporter: Any = None) -> Any:
    """Train on the config's engine; events go to `reporter` (archer.core.progress.Reporter).
    Returns the run's `archer.core.progress.TrainResult` (both engines)."""
    engine = composed.cfg.engine
    check_output_dirs(composed.cfg, run_dir)
    if engine == "local":
        from archer.core.engines.local.trainer import train

        return train(composed, run_dir, resume=resume, reporter=reporter)
    if engine == "verl":
        from archer.core.engines.verl.launch import train as verl_train

        return verl_train(composed, run_dir, resume=resume, reporter=reporter)
    raise ValueError(f"unknown engine {engine!r}")  # unreachable: the schema validates choices


def check_output_dirs(cfg: Any, run_dir: Path) -> None:
    """The trace and warm-up cache folders can be written: said before set-up, not after warm-up."""
    from archer.core.run import check_writable_dir

    cache = cfg.trainer.cache_dir or Path(cfg.trainer.out_dir) / ".cache"
    check_writable_dir(Path(cache), "trainer.cache_dir")
    if cfg.trace.enable and cfg.trace.dir:
        check_writable_dir(Path(str(cfg.trace.dir)), "trace.dir")


def refuse_early(composed: Any) -> None:
    """An engine's refusals that need no run directory (the CLI says them before it takes the
    run's lock and makes its folder)."""
    if composed.cfg.engine == "verl":
        from archer.core.engines.verl.launch import refuse_early as verl_refuse_early

        verl_refuse_early(composed)
