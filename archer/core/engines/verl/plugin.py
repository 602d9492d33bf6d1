"""archer's verl plugin: registers archer's policy losses (`archer`, `aspo`), its advantage
estimators (`archer_grpo`, `archer_rloo`, `archer_reinforce_plus_plus_baseline`) and the `hf`
rollout backend in verl's registries, and, on a machine without an accelerator, activates archer's
CPU platform for verl (cpu_platform.py); the `archer_sync` trainer registers only where a trainer
is built (`register_trainer()`), so importing verl stays cheap (bench/verl_import_cost.py).

verl imports this module in every process that imports verl — Ray workers included — through the
entry point `archer` of the `verl.plugins` group (pyproject.toml) or, as a fallback,
`VERL_USE_EXTERNAL_MODULES=archer.core.engines.verl.plugin`. Registries are per process, so the
registration happens in each: at import when verl's `core_algos` (the registries) is already
loaded, else right after it loads (an import hook), so that processes which never use a loss do
not pay for loading it. verl logs a failing plugin at debug level only, so this module
prints the failure at ERROR level with its traceback itself, `status()` reports it (`archer env`,
`archer train --dry-run`), and `register()` raises it again (`archer train` calls it before Ray
starts).
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
from typing import Any

ENTRY_POINT_GROUP = "verl.plugins"
ENTRY_POINT_NAME = "archer"
MODULE = "archer.core.engines.verl.plugin"
TRAINER = "archer_sync"

log = logging.getLogger("archer.verl")


class PluginError(RuntimeError):
    """archer could not register itself in verl."""


def _install(registry: dict, name: str, fn: Any, kind: str) -> None:
    existing = registry.get(name)
    if existing is not None and getattr(existing, "_archer_name", None) != getattr(fn, "_archer_name", name):
        where = f"{getattr(existing, '__module__', '?')}.{getattr(existing, '__qualname__', existing)}"
        raise PluginError(f"verl already has a {kind} named {name!r} ({where}); archer does not replace it")
    registry[name] = fn


HF_ROLLOUT_MODULE = "archer.core.engines.verl.rollout_hf"


def _load_hf_replica() -> Any:
    import importlib

    return importlib.import_module(HF_ROLLOUT_MODULE).HFReplica


def _register_rollout() -> None:
    """`rollout.name=hf`: the adapter by name in verl's rollout registry, the replica by a loader
    (both import archer's module only when verl builds them)."""
    from verl.workers.rollout import base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    base._ROLLOUT_REGISTRY[("hf", "async")] = f"{HF_ROLLOUT_MODULE}.HFRollout"
    RolloutReplicaRegistry.register("hf", _load_hf_replica)


def _activate_cpu_platform() -> None:
    """At import, in every process that imports verl: verl's device functions must answer "cpu"
    from the start where no accelerator is present (a no-op on a GPU machine)."""
    try:
        from archer.core.engines.verl.cpu_platform import activate

        activate()
    except Exception as e:  # noqa: BLE001 - reported by register() / status() through _register
        log.error("archer's CPU platform for verl failed to activate: %s: %s", type(e).__name__, e)


def _register() -> None:
    from archer.core.engines.verl.cpu_platform import activate

    activate()  # only where no accelerator is present (idempotent)
    from verl.trainer.ppo import core_algos

    from archer.core.engines.verl.estimators import all_estimators
    from archer.core.engines.verl.losses import archer_losses, verl_policy_loss

    for name in archer_losses():
        _install(core_algos.POLICY_LOSS_REGISTRY, name, verl_policy_loss(name), "policy loss")
    for name, fn in all_estimators().items():
        _install(core_algos.ADV_ESTIMATOR_REGISTRY, name, fn, "advantage estimator")
    _register_rollout()


def register_trainer() -> None:
    """The `archer_sync` trainer. Not part of `register()`: verl loads this plugin in every process
    that imports verl (vLLM servers and their workers, reward and agent-loop workers, TransferQueue
    actors), and the trainer pulls in verl's whole trainer stack (TransferQueue, Ray, the FSDP
    engine). Only the task runner, which builds the trainer, and the driver's checks import it."""
    import archer.core.engines.verl.trainer  # noqa: F401  (@register_trainer("archer_sync"))


_done = False


def register() -> None:
    """Register everything (idempotent). Failures are logged at ERROR level, then raised."""
    global _done
    if _done:
        return
    try:
        _register()
    except Exception as e:
        log.error(
            "archer's verl plugin failed to register (%s: %s); verl would only log this at debug level",
            type(e).__name__,
            e,
            exc_info=True,
        )
        if not logging.getLogger().handlers and not log.handlers:
            import sys
            import traceback

            sys.stderr.write(f"ERROR: archer's verl plugin failed to register: {type(e).__name__}: {e}\n")
            traceback.print_exc()
        raise
    _done = True


def entry_point_installed() -> bool:
    """Whether the installed archer distribution declares the `verl.plugins` entry point."""
    from importlib.metadata import entry_points

    return any(
        ep.name == ENTRY_POINT_NAME and ep.value.startswith(MODULE)
        for ep in entry_points(group=ENTRY_POINT_GROUP)
    )


def status() -> dict[str, Any]:
    """How the plugin reaches verl in this process and whether it registered (imports verl).
    The registries are read back rather than trusted, so a later overwrite shows up too."""
    info: dict[str, Any] = {
        "entry_point": entry_point_installed(),
        "env_var": MODULE in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(","),
        "registered": False,
        "error": None,
        "policy_losses": [],
        "estimators": [],
        "trainer": False,
    }
    try:
        register()
        register_trainer()
        from verl.trainer.ppo import core_algos
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

        from archer.core.engines.verl.losses import archer_losses

        ours = archer_losses()
        info["policy_losses"] = [n for n in ours if n in core_algos.POLICY_LOSS_REGISTRY]
        info["estimators"] = sorted(n for n in core_algos.ADV_ESTIMATOR_REGISTRY if n.startswith("archer_"))
        info["trainer"] = TRAINER in TRAINER_REGISTRY
        info["registered"] = bool(info["trainer"] and len(info["policy_losses"]) == len(ours))
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        info["error"] = f"{type(e).__name__}: {e}"
    return info


CORE_ALGOS = "verl.trainer.ppo.core_algos"  # where verl's loss and estimator registries live


def _register_quietly() -> None:
    try:
        register()
    except Exception:  # noqa: BLE001 - already printed at ERROR level; status() and register() report it
        pass


class _RegisterAfterCoreAlgos(importlib.abc.MetaPathFinder):
    """Registers archer's losses and estimators right after verl's `core_algos` module has run,
    in the process that imports it. `import verl` alone (vLLM servers, TransferQueue actors, ...)
    then costs nothing extra: core_algos pulls in transformers and accelerate (about a second)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != CORE_ALGOS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_quietly()

        loader.exec_module = exec_module  # this spec's own loader instance
        return spec


if CORE_ALGOS in sys.modules:
    _register_quietly()
elif not any(isinstance(f, _RegisterAfterCoreAlgos) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterCoreAlgos())

_activate_cpu_platform()
