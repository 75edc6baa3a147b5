"""Where models run: the execution device and moving modules onto it (minimal version).

Nodes never call `.to(device)` themselves; they wrap the work in `with manager.use(module):`, which puts the
module on the execution device for the duration. This minimal manager keeps used modules resident on the
device (FLUX.1 dev, its text encoders and VAE fit an 80 GB GPU together) and, when moving one there runs
out of memory, offloads the others to the CPU and tries again. Byte budgets, partial loading and pinned
streaming come later (issue 6) behind the same `use` interface.

torch is imported lazily so that importing this module stays cheap for the engine core.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Iterator


def default_device() -> Any:
    """CUDA when a GPU is visible, else the CPU."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def module_device(module: Any) -> Any:
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def same_device(a: Any, b: Any) -> bool:
    """Devices equal up to a missing index ("cuda" is "cuda:0" when that is the current device)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class MemoryManager:
    def __init__(self, device: Any = None, dtype: Any = None, offload_device: Any = "cpu",
                 keep_loaded: bool = True) -> None:
        import torch

        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype  # preferred compute dtype for loaders (None: keep the weights' dtype)
        self.offload_device = torch.device(offload_device)
        self.keep_loaded = keep_loaded
        self._lock = threading.RLock()
        self._loaded: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def load(self, module: Any) -> Any:
        """Move `module` to the execution device, offloading other modules if the device is full."""
        with self._lock:
            if not same_device(module_device(module), self.device):
                try:
                    module.to(self.device)
                except Exception as exc:
                    if not (self.is_cuda and _is_out_of_memory(exc)):
                        raise
                    self.offload_all(except_module=module)
                    module.to(self.device)
            self._loaded[id(module)] = module
            return module

    def offload(self, module: Any) -> None:
        with self._lock:
            if not same_device(module_device(module), self.offload_device):
                module.to(self.offload_device)
            self._loaded.pop(id(module), None)
            self._empty_cache()

    def offload_all(self, except_module: Any = None) -> None:
        with self._lock:
            for module in list(self._loaded.values()):
                if module is not except_module:
                    self.offload(module)
            self._empty_cache()

    @contextlib.contextmanager
    def use(self, module: Any) -> Iterator[Any]:
        """`with manager.use(module) as m:` runs `m` on the execution device."""
        if module is None:
            yield None
            return
        self.load(module)
        try:
            yield module
        finally:
            if not self.keep_loaded and self.device != self.offload_device:
                self.offload(module)

    def _empty_cache(self) -> None:
        if self.is_cuda:
            import torch

            torch.cuda.empty_cache()

    def peak_memory_bytes(self) -> int | None:
        """Peak allocated bytes on a CUDA device since the last reset (None on the CPU)."""
        if not self.is_cuda:
            return None
        import torch

        return int(torch.cuda.max_memory_allocated(self.device))


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def manager_from(models: Any) -> MemoryManager:
    """The context's manager, or a CPU manager when a node runs without one (unit tests)."""
    if models is not None:
        return models
    return MemoryManager(device="cpu")
