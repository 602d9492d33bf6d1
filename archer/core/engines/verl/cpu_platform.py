"""verl on a machine without an accelerator: a CPU platform for verl 0.9.1.

verl's platform layer knows cuda/npu/rocm and falls back to CUDA on a CPU machine; its FSDP engine
is registered for cuda and npu only; the worker's process-group backend string becomes
"cpu:gloo,cpu:gloo" (rejected by torch) once the device is "cpu"; and Ray is asked for a custom
resource "CPU" it does not have. `activate()` fixes exactly those, and only where no CUDA or NPU
device is visible (archer's plugin calls it in every process that imports verl, so the driver,
the task runner and every worker agree): the verl path then runs on a laptop or a CI machine
(gloo, FSDP2, fp32) to check a config, a reward and a data file before a cluster job. On a GPU
machine it does nothing.
"""

from __future__ import annotations

import contextlib
import sys
import types

import torch
from verl.plugin.platform import PlatformRegistry, get_platform, set_platform
from verl.plugin.platform.platform_base import PlatformBase


class _CpuDeviceModule(types.ModuleType):
    """Stands in for `torch.cuda`: real CPU functions where torch.cpu has them, zeros for memory
    statistics, no-ops for the rest."""

    def __init__(self) -> None:
        super().__init__("verl_cpu_device")

    def __getattr__(self, name: str):
        if name.startswith("__"):  # abc and pickling probe dunders; answering them breaks both
            raise AttributeError(name)
        fixed = {
            "is_available": lambda: True,
            "device_count": lambda: 1,
            "current_device": lambda: "cpu",
            "mem_get_info": lambda *a, **k: (0, 0),
            "get_device_name": lambda *a, **k: "CPU",
            "manual_seed": torch.manual_seed,
            "manual_seed_all": torch.manual_seed,
        }
        if name in fixed:
            return fixed[name]
        if hasattr(torch.cpu, name):
            return getattr(torch.cpu, name)
        if "memory" in name:
            return lambda *a, **k: 0
        return lambda *a, **k: None


_DEVICE_MODULE = _CpuDeviceModule()


class PlatformCPU(PlatformBase):
    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        return True

    def current_device(self):
        return "cpu"  # used as .to(get_device_id())

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None

    def ray_resource_options(self, num_gpus: float) -> dict:
        # Ray has no custom resource named "CPU": ask for CPUs directly (verl's default would send
        # {"resources": {"CPU": n}}, which Ray rejects)
        return {"num_cpus": num_gpus}


def _register_engine_for_cpu() -> None:
    """verl registers its FSDP engine for cuda and npu only; add the same class for "cpu"."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    for backend in ("fsdp", "fsdp2"):
        EngineRegistry._engines["language_model"][backend].setdefault("cpu", FSDPEngineWithLMHead)


def _gloo_process_group() -> None:
    import verl.utils.distributed as vd

    original = vd.initialize_global_process_group_ray
    if getattr(original, "_archer_cpu", False):
        return

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_global_process_group_ray._archer_cpu = True
    vd.initialize_global_process_group_ray = initialize_global_process_group_ray
    # modules imported before this one (e.g. by a verl plugin) hold the old binding or device name
    workers = sys.modules.get("verl.workers.engine_workers")
    if workers is not None:
        workers.initialize_global_process_group_ray = initialize_global_process_group_ray
    fsdp_impl = sys.modules.get("verl.workers.engine.fsdp.transformer_impl")
    if fsdp_impl is not None:
        fsdp_impl.device_name = "cpu"


def check_cpu_resources(resource_pool_spec: dict) -> None:
    """verl's resource check, for CPUs: the pools' ranks must fit the Ray cluster's CPUs."""
    import ray

    available = sum(n.get("CPU", 0) for n in ray._private.state.available_resources_per_node().values())
    wanted = sum(n for nodes in resource_pool_spec.values() for n in nodes)
    if available < wanted:
        raise ValueError(f"Ray has {available:g} CPUs free, fewer than the {wanted} ranks the run needs")


def accelerator_present() -> bool:
    """A CUDA (or NPU) device is visible to this process."""
    if torch.cuda.is_available():
        return True
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


_activated = False


def active() -> bool:
    """archer's CPU platform is verl's current platform in this process."""
    return _activated and isinstance(get_platform(), PlatformCPU)


def activate(*, force: bool = False) -> bool:
    """Make verl run on this machine's CPUs (platform, FSDP engine for "cpu", gloo process
    groups). Only where no accelerator is present, unless `force` (tests); returns whether the
    platform is active."""
    global _activated
    if _activated:
        return True
    if accelerator_present() and not force:
        return False  # never registered: verl's own detection cannot pick it either
    PlatformRegistry.register(platform="cpu")(PlatformCPU)
    set_platform(PlatformCPU())
    _gloo_process_group()
    _register_engine_for_cpu()
    _activated = True
    return True
