"""Running a model under the manager: activation estimates and the one out-of-memory retry.

The manager wraps a model's entry points (forward, encode, decode). Before a call, an activation estimate
read from the inputs (engine.memory.budget) may move blocks to streaming to leave room; when a call runs out
of memory, the frames holding its activations are cleared, other models are evicted, caches freed, enough
blocks streamed for the failed allocation, and the call runs once more. A second failure raises
`OutOfMemoryError` with the bytes and the flag that helps. Calls are pure functions of their inputs, so the
retry gives the same result.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

from engine.memory.budget import estimate_activation_bytes
from engine.memory.errors import OutOfMemoryError
from engine.memory.plan import ModelEntry, plan_shrink
from engine.memory.torch_backend import requested_bytes


class CallRecovery:
    """Mixin of engine.memory.manager.MemoryManager (uses its registry, lock, backend and placement)."""

    def _guarded(self, key: int, name: str, original: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            # read each call: compilation swaps a compiled forward in here (engine/sampling/step_cache/compile.py)
            target = call.__wrapped__  # type: ignore[attr-defined]
            entry = self._entries.get(key)
            if entry is None or entry.in_use == 0 or self._depth.get(key, 0) > 0:
                return target(*args, **kwargs)
            self._depth[key] = 1
            try:
                return self._call_with_retry(entry, name, target, args, kwargs)
            finally:
                self._depth[key] = 0

        call.__wrapped__ = original  # type: ignore[attr-defined]
        return call

    def _call_with_retry(self, entry: ModelEntry, name: str, original: Callable, args: tuple, kwargs: dict) -> Any:
        module = self._refs[entry.key]()
        patched_outside = self.external_patches.applied(module)  # then weights must not move mid-call
        estimate = estimate_activation_bytes(module, args, kwargs) if name == "forward" else None
        if estimate is not None and estimate != self._estimates.get(entry.key) and not patched_outside:
            with self._lock:  # another image size or batch: make room (or take it back) before running
                self._estimates[entry.key] = estimate
                self._extra_reserve.pop(entry.key, None)  # what was learned applied to other inputs
                self._place_with_recovery(entry, module)
        try:
            return original(*args, **kwargs)
        except Exception as exc:
            if not self._is_oom(exc):
                raise
            requested = _requested(exc) or max(entry.total_bytes // 10, 1)
            drop_frames(exc)
        self._shrink_for(entry, module, requested, move_own=not patched_outside)
        try:
            return original(*args, **kwargs)
        except Exception as exc:
            if not self._is_oom(exc):
                raise
            error = self._out_of_memory(entry, exc, retried=True)
            drop_frames(exc)
        self._extra_reserve.pop(entry.key, None)  # it did not help: do not starve the next, smaller run
        self.backend.empty_cache()
        raise error

    def _shrink_for(self, entry: ModelEntry, module: Any, requested: int, move_own: bool = True) -> None:
        """Out-of-memory recovery: evict others, free caches, and stream enough more blocks for `requested`
        (not when patches applied outside the manager pin this model's weights for the call)."""
        with self._lock:
            self.events.append(("retry", entry.label, requested))
            self._evict_others(entry)
            self.backend.empty_cache()
            self._extra_reserve[entry.key] = self._extra_reserve.get(entry.key, 0) + requested  # remembered
            _, free = self.backend.device_memory()
            shortfall = requested * 5 // 4 - (free or 0)
            if shortfall <= 0 or not move_own:
                return  # freeing caches and other models made room (or is all that may be done)
            plan = plan_shrink(entry, shortfall)
            if not plan.fits:
                return  # nothing more can be streamed: the retry shows whether freeing caches was enough
            self.backend.apply(module, plan.resident, plan.streamed)
            entry.resident, entry.streamed, entry.window_bytes = set(plan.resident), plan.streamed, plan.window_bytes

    def _out_of_memory(self, entry: ModelEntry, exc: BaseException, retried: bool) -> OutOfMemoryError:
        total, free = self.backend.device_memory()
        streamed = sum(entry.part(n).nbytes for n in entry.streamed)
        return OutOfMemoryError(entry.label, self.device_type, self.settings.mode, _requested(exc), free,
                                total, entry.resident_bytes, streamed, retried, self.settings.budget_bytes)


def drop_frames(exc: BaseException) -> None:
    """Free the activations held by the frames of a failed call (their tensors would pin device memory)."""
    traceback.clear_frames(exc.__traceback__)


def _requested(exc: BaseException) -> int | None:
    """The failed allocation's size, from the error (the accounting device sets it as an attribute)."""
    requested = getattr(exc, "requested", None)
    if isinstance(requested, int):
        return requested
    return requested_bytes(exc)
