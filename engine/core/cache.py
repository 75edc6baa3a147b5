"""Output cache keyed by input signature, bounded by entry count and by bytes, least recently used first.

A node's signature hashes its class, its literal inputs, its is-changed token, the signatures of the nodes
it links to (so a change anywhere upstream changes every key below it) and, for non-idempotent nodes, its
id. Hashing the upstream *signatures* rather than listing every ancestor keeps the cost linear in the
number of nodes (ComfyUI's ancestor lists grow quadratically on long chains).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

_MAX_SIZE_DEPTH = 4


def node_signature(class_type: str, literals: Iterable[tuple[str, Any]], links: Iterable[tuple[str, str, int]],
                   changed_token: Any = None, node_id: str | None = None) -> str:
    """Signature of one node. `links` are (input name, upstream signature, output slot)."""
    if isinstance(changed_token, float) and changed_token != changed_token:  # NaN: always re-run
        changed_token = uuid.uuid4().hex
    parts = (class_type, repr(changed_token), node_id, sorted((name, _stable_repr(v)) for name, v in literals),
             sorted(links))
    return hashlib.blake2b(repr(parts).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _stable_repr(value: Any) -> str:
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return "{" + ",".join(f"{k!r}:{_stable_repr(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_stable_repr(v) for v in value) + "]"
    return repr(value)


def estimate_nbytes(value: Any, depth: int = 0) -> int:
    """Bytes held by tensors/arrays in a value (model handles are owned by the memory manager: 0)."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if depth >= _MAX_SIZE_DEPTH:
        return 0
    if isinstance(value, dict):
        return sum(estimate_nbytes(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(estimate_nbytes(v, depth + 1) for v in value)
    return 0


@dataclass
class CacheEntry:
    outputs: list[list[Any]]  # one list of values per output slot (list semantics)
    ui: dict[str, list[Any]] | None = None
    nbytes: int = 0


class OutputCache:
    def __init__(self, max_entries: int = 1000, max_bytes: int | None = 8 << 30) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: str, outputs: list[list[Any]], ui: dict[str, list[Any]] | None = None) -> CacheEntry:
        entry = CacheEntry(outputs, ui, estimate_nbytes(outputs))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            self._evict()
        return entry

    def _evict(self) -> None:
        # Never evict the entry just added: a result larger than the budget still serves this prompt.
        while len(self._entries) > 1 and (len(self._entries) > self.max_entries or (
                self.max_bytes is not None and self._bytes > self.max_bytes)):
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes
