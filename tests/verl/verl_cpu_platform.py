"""Test-only CPU platform for verl 0.9.1, so its real FSDP engine and workers run on a GPU-less host.

verl's platform layer knows cuda/npu/rocm and falls back to CUDA on a CPU machine; the FSDP engine
is registered for cuda and npu only; and the worker's process-group backend string becomes
"cpu:gloo,cpu:gloo" (rejected by torch) once the device is "cpu". This module fixes exactly those
three things (facts in ../shared/reference/install-and-platform.md §4):

- registers and activates `PlatformCPU` (device "cpu", backend gloo, Ray resource "CPU", memory
  statistics 0, no-op synchronisation and profiling);
- registers verl's `FSDPEngineWithLMHead` for device "cpu";
- makes `initialize_global_process_group_ray` default to backend "gloo".

Import it before any `verl.workers.*` module. In Ray workers it loads through
`VERL_USE_EXTERNAL_MODULES=verl_cpu_platform` (with this folder on PYTHONPATH). Never shipped in the
package: real runs use GPUs.
"""

from __future__ import annotations

import contextlib
import sys
import types

import torch
from verl.plugin.platform import PlatformRegistry, set_platform
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


@PlatformRegistry.register(platform="cpu")
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


set_platform(PlatformCPU())


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


_gloo_process_group()
_register_engine_for_cpu()
