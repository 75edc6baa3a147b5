"""A bounded cache of LoRA delta products (up @ down, float32), so a strength change is one pass of
`weight + strength * delta` over memory instead of a matrix product per weight.

On the CPU the products are what a strength change costs (rank-32 products over every patched weight); on a
GPU they are cheap and memory is scarce, so the budget there is small. Budget in bytes per device type:
`FLUXGRAPH_LORA_DELTA_CACHE_MB` (default 2048 on the CPU, 0 on GPUs). Entries follow their `WeightDelta`:
when a converted LoRA is dropped, its products go too.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Any

_DEFAULT_MB = {"cpu": 2048}


def budget_bytes(device_type: str) -> int:
    value = os.environ.get("FLUXGRAPH_LORA_DELTA_CACHE_MB")
    megabytes = float(value) if value else _DEFAULT_MB.get(device_type, 0)
    return int(megabytes * 1024 * 1024)


class DeltaCache:
    def __init__(self) -> None:
        self._entries: "OrderedDict[tuple[int, str], tuple[weakref.ref, Any]]" = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._lock = threading.Lock()

    def product(self, delta: Any, device: Any) -> Any | None:
        """The float32 up @ down of `delta` on `device`, computed once while it fits the budget; None when it
        does not fit (the caller then multiplies itself)."""
        import torch

        key = (id(delta), str(device))
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is delta:
                self._entries.move_to_end(key)
                return hit[1]
        size = delta.up.shape[0] * delta.down.shape[1] * 4
        budget = budget_bytes(torch.device(device).type)
        if size > budget:
            return None
        value = delta.up.to(device, torch.float32) @ delta.down.to(device, torch.float32)
        with self._lock:
            self._entries[key] = (weakref.ref(delta, lambda _r, k=key: self._drop(k)), value)
            kind = key[1].split(":")[0]
            self._bytes[kind] = self._bytes.get(kind, 0) + size
            while self._bytes[kind] > budget:
                oldest = next((k for k in self._entries if k[1].split(":")[0] == kind), None)
                if oldest is None or oldest == key:
                    break
                self._drop_locked(oldest)
        return value

    def _drop(self, key: tuple[int, str]) -> None:
        with self._lock:
            self._drop_locked(key)

    def _drop_locked(self, key: tuple[int, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:  # (no imports here: this also runs from weakref callbacks at interpreter exit)
            kind = key[1].split(":")[0]
            self._bytes[kind] = self._bytes.get(kind, 0) - entry[1].numel() * 4

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes.clear()


DELTAS = DeltaCache()
