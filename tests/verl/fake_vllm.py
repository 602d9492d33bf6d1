"""A stand-in `vllm` package, so that verl's real vLLM server module (vllm_async_server.py) imports
on a machine without vLLM and its `generate()` can run against a fake engine.

Every `vllm.*` module is an empty module whose attributes are permissive placeholders, except
`vllm.SamplingParams`, which behaves like vLLM's for the fields verl's server passes (and refuses
any other keyword, as vLLM's does), and `vllm.inputs.TokensPrompt` (a dict, as vLLM's TypedDict).
`installed()` puts it in place and, on exit, takes out every module imported meanwhile (verl's
vLLM modules included), so nothing leaks into other tests.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import sys
import types
from collections.abc import Iterator
from typing import Any

VERSION = "0.24.0"  # what bench/device/stage_vllm.py stages for verl 0.9.1


class _Anything:
    """Callable, subclassable, with any attribute: what a module-level vLLM name is used as at import."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Anything:
        return _Anything()

    def __getattr__(self, name: str) -> _Anything:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (object,)


class SamplingParams:
    """vLLM's SamplingParams as far as verl's server uses it: keyword fields, `logprobs` None (no
    log-probs), 0 (the sampled token's) or k (the top k and the sampled token)."""

    FIELDS = {
        "max_tokens": 16,
        "logprobs": None,
        "prompt_logprobs": None,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "ignore_eos": False,
        "seed": None,
        "extra_args": None,
    }

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"SamplingParams got unexpected keyword arguments {sorted(unknown)}")
        for name, default in self.FIELDS.items():
            setattr(self, name, kwargs.get(name, default))


class _FakeModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name == "vllm" or name.startswith("vllm."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _FakeModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "vllm":
            module.__version__ = VERSION
            module.SamplingParams = SamplingParams
        elif module.__name__ == "vllm.inputs":
            module.TokensPrompt = dict  # a TypedDict in vLLM


@contextlib.contextmanager
def installed() -> Iterator[None]:
    before = set(sys.modules)
    finder = _Finder()
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        return VERSION if name == "vllm" else real_version(name)

    sys.meta_path.insert(0, finder)
    importlib.metadata.version = version
    try:
        yield
    finally:
        importlib.metadata.version = real_version
        sys.meta_path.remove(finder)
        for name in set(sys.modules) - before:
            del sys.modules[name]
