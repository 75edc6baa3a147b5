"""The memory manager: owns where every model's weights live, under a byte budget.

Nodes never call `.to(device)`; they run a model inside `with manager.use(module):`. The manager keeps a
registry of the models it has seen (sizes, parts, what is resident, streamed or off the device), decides
with `engine.memory.plan` what must leave the device (least recently used models first) and how much of the
model about to run stays resident, and has a backend carry that out: `engine.memory.torch_backend` for real
modules, `engine.memory.accounting` (a simulated device) in tests. A model larger than the budget runs with
the rest of its blocks streamed through a two-block window, prefetched one block ahead.

Out of memory while loading or running: caches are freed, other models evicted and more blocks streamed,
then the call is retried once; if it fails again an `OutOfMemoryError` says how much was needed and which
flag helps. LoRA patches are not the manager's business: `engine.models.lora.patch.apply_patches` swaps
patched tensors in, and the manager restores the originals before it moves a patched module (docs/memory.md).

Importing this module and constructing a manager import no torch (server start-up stays fast); torch
loads when a model is first used.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
import sys
import threading
import weakref
from typing import Any, Iterator

from engine.memory.budget import MemorySettings
from engine.memory.errors import DeviceMemoryError, ModelFileChangedError, NotEnoughMemoryError
from engine.memory.patches import ExternalPatches
from engine.memory.plan import ModelEntry, Plan, plan_use
from engine.memory.recovery import CallRecovery, drop_frames
from engine.memory.torch_backend import TorchBackend

KEEP_PLACEMENT_SLACK = 0.05  # re-placing a partial model for a gain under 5% of it is not worth the copies


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


class MemoryManager(CallRecovery):
    def __init__(self, device: Any = None, dtype: Any = None, offload_device: Any = "cpu",
                 keep_loaded: bool = True, *, settings: MemorySettings | None = None, backend: Any = None,
                 external_patches: Any = None) -> None:
        self.settings = settings or MemorySettings()
        self._device_spec = device if device is not None else self.settings.device
        self.dtype = dtype  # preferred compute dtype for loaders (None: keep the weights' dtype)
        self._offload_spec = offload_device
        self.keep_loaded = keep_loaded and self.settings.keep_loaded
        self.external_patches = external_patches if external_patches is not None else ExternalPatches()
        self._backend = backend
        self._device: Any = None
        self._lock = threading.RLock()
        self._entries: dict[int, ModelEntry] = {}
        self._refs: dict[int, weakref.ref] = {}
        self._estimates: dict[int, int] = {}  # activation bytes per model, estimated from its last inputs
        self._extra_reserve: dict[int, int] = {}  # bytes added after running out of memory with it
        self._depth: dict[int, int] = {}  # nested wrapped calls per model (only the outer one retries)
        self._tick = itertools.count(1)
        self.events: deque[tuple] = deque(maxlen=1000)  # ("evict"|"place"|"retry", label, ...): tests, logs

    @classmethod
    def from_settings(cls, settings: MemorySettings, **kwargs: Any) -> "MemoryManager":
        return cls(settings=settings, **kwargs)

    # ----- device and backend (torch loads here, on first use)
    @property
    def device(self) -> Any:
        if self._device is None:
            if self._backend is not None and hasattr(self._backend, "device"):
                self._device = self._backend.device
            else:
                import torch

                self._device = torch.device(self._device_spec) if self._device_spec is not None else default_device()
        return self._device

    @property
    def offload_device(self) -> Any:
        import torch

        return torch.device(self._offload_spec)

    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = TorchBackend(self.device, offload_device=self._offload_spec)
        return self._backend

    @property
    def is_cuda(self) -> bool:
        return getattr(self.device, "type", None) == "cuda"

    @property
    def device_type(self) -> str:
        return str(getattr(self.device, "type", self.device))

    # ----- the interface nodes use
    @contextlib.contextmanager
    def use(self, module: Any, *, activation_bytes: int | None = None) -> Iterator[Any]:
        """`with manager.use(module) as m:` runs `m` on the execution device (partially, if it must)."""
        if module is None:
            yield None
            return
        entry = self._acquire(module, activation_bytes)
        error: BaseException | None = None
        try:
            yield module
        except Exception as exc:
            if not self._is_oom(exc):
                raise
            error = self._out_of_memory(entry, exc, retried=False)
            drop_frames(exc)
        finally:
            self._release(entry)
        if error is not None:
            self.backend.empty_cache()
            raise error

    def load(self, module: Any) -> Any:
        """Place `module` for running now, without holding it in use (it may be evicted for another)."""
        entry = self._acquire(module, None)
        self._release(entry, offload=False)
        return module

    def offload(self, module: Any) -> None:
        with self._lock:
            entry = self._entries.get(id(module))
            if entry is not None and self._refs[entry.key]() is module:
                self._offload_entry(entry)
            else:
                self.backend.offload(module)
            self.backend.empty_cache()

    def offload_all(self, except_module: Any = None) -> None:
        """Every model not in use off the device (POST /free); file-backed weights leave RAM too."""
        with self._lock:
            if not self._entries:
                return
            for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
                if entry.in_use == 0 and self._refs[entry.key]() is not except_module:
                    self._offload_entry(entry)
            self.backend.empty_cache()

    free = offload_all

    def peak_memory_bytes(self) -> int | None:
        """Peak allocated bytes on a CUDA device since the last reset (None on the CPU)."""
        if self._backend is None and "torch" not in sys.modules:
            return None
        return self.backend.peak_bytes()

    # ----- placement
    def _register(self, module: Any) -> ModelEntry:
        key = id(module)
        entry = self._entries.get(key)
        if entry is not None and self._refs[key]() is module:
            return entry
        parts, label, source = self.backend.describe(module)
        entry = ModelEntry(key=key, label=label, parts=parts, source=source)
        entry.resident = entry.fixed  # owned memory on a CPU device: there from the start
        self._entries[key] = entry
        self._refs[key] = weakref.ref(module, lambda _ref, k=key: self._forget(k))
        self.backend.wrap(module, lambda name, original: self._guarded(key, name, original))
        return entry

    def _forget(self, key: int) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._refs.pop(key, None)
            self._estimates.pop(key, None)
            self._extra_reserve.pop(key, None)

    def _acquire(self, module: Any, activation_bytes: int | None) -> ModelEntry:
        with self._lock:
            entry = self._register(module)
            changed = self.backend.changed_files(module)
            if changed:
                raise ModelFileChangedError(entry.label, changed)
            entry.in_use += 1
            entry.last_used = next(self._tick)
            if activation_bytes is not None:
                self._estimates[entry.key] = activation_bytes
            try:
                self._place_with_recovery(entry, module)
            except BaseException:
                entry.in_use -= 1
                raise
            return entry

    def _release(self, entry: ModelEntry, offload: bool = True) -> None:
        with self._lock:
            entry.in_use = max(entry.in_use - 1, 0)
            module = self._refs.get(entry.key, lambda: None)()
            if offload and entry.in_use == 0 and not self.keep_loaded and module is not None:
                self._offload_entry(entry)

    def _place_with_recovery(self, entry: ModelEntry, module: Any) -> None:
        try:
            self._place(entry, module)
            return
        except Exception as exc:
            if not self._is_oom(exc):
                raise
            drop_frames(exc)
        self.events.append(("retry", entry.label, "load"))
        self._offload_entry(entry)  # from a clean slate: the failed attempt may have moved some parts
        self._evict_others(entry)
        self.backend.empty_cache()
        _total, free = self.backend.device_memory()
        try:
            self._place(entry, module, cap=free, retry=True)
        except Exception as exc:
            if not self._is_oom(exc):
                raise
            error = self._out_of_memory(entry, exc, retried=True)
            drop_frames(exc)
            self.backend.empty_cache()
            raise error from None

    def _place(self, entry: ModelEntry, module: Any, cap: int | None = None, retry: bool = False) -> None:
        """Plan and carry out the placement of `entry`; a retry after running out may stream in any mode."""
        budget = self.weights_budget(entry)
        if cap is not None:
            budget = cap if budget is None else min(budget, cap)
        plan = plan_use(self._entries, entry.key, budget, stream_all=self.settings.stream_all,
                        allow_partial=self.settings.allow_partial or retry)
        if not plan.fits and (self.settings.allow_partial or retry):
            raise NotEnoughMemoryError(entry.label, plan.needed_bytes, budget or 0, self.settings.mode,
                                       self.device_type)
        if self._unchanged(entry, plan) or self._keep_current(entry, plan):
            return
        for key in plan.evict:
            self._offload_entry(self._entries[key])
        self._before_move(module)
        self.backend.apply(module, plan.resident, plan.streamed)
        entry.resident, entry.streamed, entry.window_bytes = set(plan.resident), plan.streamed, plan.window_bytes
        entry.placed = True
        self.events.append(("place", entry.label, len(plan.resident), len(plan.streamed)))

    def _is_oom(self, exc: BaseException) -> bool:
        return not isinstance(exc, DeviceMemoryError) and self.backend.is_out_of_memory(exc)

    def _unchanged(self, entry: ModelEntry, plan: Plan) -> bool:
        return (entry.placed and not plan.evict and entry.resident == set(plan.resident)
                and entry.streamed == plan.streamed)

    def _before_move(self, module: Any) -> None:
        if self.external_patches.applied(module):
            self.external_patches.restore(module)

    def _keep_current(self, entry: ModelEntry, plan: Plan) -> bool:
        """A measured budget moves a little from call to call: keep a partial placement that still fits."""
        if not entry.streamed or not plan.streamed or plan.evict:
            return False
        if entry.device_bytes > plan.needed_bytes:
            return False
        return plan.needed_bytes - entry.device_bytes < KEEP_PLACEMENT_SLACK * entry.total_bytes

    def weights_budget(self, entry: ModelEntry | None = None) -> int | None:
        """Device bytes the weights may use now: the set or measured total minus the activation reserve."""
        estimate = self._estimates.get(entry.key) if entry is not None else None
        reserve = self.settings.activation_reserve(self.device_type, estimate)
        reserve += self._extra_reserve.get(entry.key, 0) if entry is not None else 0
        if self.settings.budget_bytes is not None:
            return self.settings.budget_bytes - reserve
        total, free = self.backend.device_memory()
        if free is None:
            return None
        ours = sum(e.device_bytes for e in self._entries.values()) if self.device_type != "cpu" else 0
        return free + ours - reserve

    def _offload_entry(self, entry: ModelEntry) -> None:
        module = self._refs[entry.key]()
        if module is None:
            return
        if entry.on_device:
            self.events.append(("evict" if entry.in_use == 0 else "offload", entry.label))
        self._before_move(module)
        self.backend.offload(module)
        entry.resident, entry.streamed, entry.window_bytes, entry.placed = entry.fixed, (), 0, False

    def _evict_others(self, entry: ModelEntry) -> None:
        for other in sorted(self._entries.values(), key=lambda e: e.last_used):
            if other.key != entry.key and other.in_use == 0 and other.on_device:
                self._offload_entry(other)

    # ----- reporting
    def stats(self) -> dict[str, Any]:
        """What is loaded where, for /system_stats (no torch import when nothing was loaded). Never waits
        long for a model being loaded: the figures may then be a moment old."""
        locked = self._lock.acquire(timeout=0.05)
        try:
            return self._stats()
        finally:
            if locked:
                self._lock.release()

    def _stats(self) -> dict[str, Any]:
        models = []
        for entry in sorted(list(self._entries.values()), key=lambda e: -e.last_used):
            ref = self._refs.get(entry.key)
            module = ref() if ref is not None else None
            if module is None:
                continue
            streamed = sum(entry.part(n).nbytes for n in entry.streamed)
            models.append({
                "name": entry.label, "source": entry.source, "total_bytes": entry.total_bytes,
                "device_bytes": entry.device_bytes, "resident_bytes": entry.resident_bytes,
                "streamed_bytes": streamed, "window_bytes": entry.window_bytes if entry.streamed else 0,
                "host_bytes": self.backend.host_bytes(module), "parts": len(entry.parts),
                "resident_parts": len(entry.resident), "streamed_parts": len(entry.streamed),
                "in_use": entry.in_use > 0,
            })
        device = str(self._device) if self._device is not None else (self._device_spec or "auto")
        budget = self.weights_budget(None) if self._backend is not None else None
        return {"mode": self.settings.mode, "device": str(device), "budget_bytes": self.settings.budget_bytes,
                "weights_budget_bytes": budget, "weights_on_device_bytes": sum(m["device_bytes"] for m in models),
                "models": models}

def manager_from(models: Any) -> MemoryManager:
    """The context's manager, or a CPU manager when a node runs without one (unit tests)."""
    if models is not None:
        return models
    return MemoryManager(device="cpu")


__all__ = ["MemoryManager", "MemorySettings", "default_device", "module_device", "same_device", "manager_from"]
