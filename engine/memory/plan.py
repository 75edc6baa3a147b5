"""Placement decisions, in bytes and names only: which models leave the device, which parts of the model
about to run stay resident, which are streamed. No torch here, so every rule is tested on any machine.

A model is a sequence of parts in execution order: its always-resident base (embedders, norms, output
layer, buffers) and its blocks, which may be streamed. Streaming needs a window on the device of two
blocks (the one running and the one being prefetched); the window counts against the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

STREAM_SLOTS = 2  # the block that runs and the block prefetched behind it


@dataclass(frozen=True)
class PartSpec:
    name: str
    nbytes: int
    block: bool = False  # a streamable block; False: part of the always-resident base
    movable: bool = True  # False: the bytes cannot leave the device (owned memory on a CPU device)


@dataclass
class ModelEntry:
    """The ledger's record of one registered model."""

    key: int
    label: str
    parts: tuple[PartSpec, ...]
    resident: set[str] = field(default_factory=set)
    streamed: tuple[str, ...] = ()
    window_bytes: int = 0
    last_used: int = 0
    in_use: int = 0
    source: str = ""
    placed: bool = False  # the backend holds this model as `resident`/`streamed` say

    @property
    def on_device(self) -> bool:
        """Whether evicting it would free anything."""
        return bool(self.resident - self.fixed or self.streamed)

    @property
    def total_bytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    @property
    def resident_bytes(self) -> int:
        return sum(p.nbytes for p in self.parts if p.name in self.resident)

    @property
    def device_bytes(self) -> int:
        """What the model holds on the device: resident parts plus the streaming window."""
        return self.resident_bytes + (self.window_bytes if self.streamed else 0)

    @property
    def fixed_bytes(self) -> int:
        """Bytes that cannot leave the device whatever is decided (always counted as resident)."""
        return sum(p.nbytes for p in self.parts if not p.movable)

    @property
    def fixed(self) -> set[str]:
        return {p.name for p in self.parts if not p.movable}

    def part(self, name: str) -> PartSpec:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)


@dataclass(frozen=True)
class Plan:
    evict: tuple[int, ...]  # keys of models to take off the device entirely, least recently used first
    resident: frozenset[str]  # parts of the target model on the device
    streamed: tuple[str, ...]  # parts of the target streamed through the window, in execution order
    window_bytes: int
    fits: bool  # False: even the base and the window exceed the budget
    needed_bytes: int  # device bytes this plan needs for the target (the minimum when it does not fit)


def window_for(parts: Iterable[PartSpec]) -> int:
    """Bytes of the streaming window for these streamed parts (their largest, twice when there are two)."""
    sizes = [p.nbytes for p in parts]
    if not sizes:
        return 0
    return max(sizes) * min(STREAM_SLOTS, len(sizes))


def plan_use(models: dict[int, ModelEntry], key: int, budget: int | None, *, stream_all: bool = False,
             allow_partial: bool = True) -> Plan:
    """Where everything goes so that model `key` can run within `budget` device bytes (None: no limit).

    Other models are evicted whole, least recently used first, and only as far as needed; models in use
    (a nested `use`) are never evicted. When the target does not fit even alone, it is loaded partially:
    the base and as many blocks as fit stay resident, spread evenly between the streamed ones so that each
    prefetch overlaps resident compute. `stream_all` (no-VRAM mode) streams every movable block.
    """
    target = models[key]
    everything = frozenset(p.name for p in target.parts)
    if budget is None:
        return Plan((), everything, (), 0, True, target.total_bytes)
    others = [m for k, m in models.items() if k != key]
    evictable = sorted((m for m in others if not m.in_use and m.device_bytes > m.fixed_bytes),
                       key=lambda m: m.last_used)
    room = budget - sum(m.device_bytes for m in others)  # free now, before any eviction
    freeable = sum(m.device_bytes - m.fixed_bytes for m in evictable)
    full = target.total_bytes
    if not stream_all and full <= room + freeable:
        evict = _evict_until(evictable, full - room)
        return Plan(evict, everything, (), 0, True, full)
    evict = tuple(m.key for m in evictable)
    if not allow_partial:  # high-VRAM mode: load whole anyway (out-of-memory recovery streams if needed)
        return Plan(evict, everything, (), 0, False, full)
    return _partial(target, room + freeable, evict, stream_all)


def _evict_until(evictable: Sequence[ModelEntry], shortfall: int) -> tuple[int, ...]:
    evict: list[int] = []
    for model in evictable:
        if shortfall <= 0:
            break
        evict.append(model.key)
        shortfall -= model.device_bytes - model.fixed_bytes
    return tuple(evict)


def _partial(target: ModelEntry, room: int, evict: tuple[int, ...], stream_all: bool) -> Plan:
    movable_blocks = [p for p in target.parts if p.block and p.movable]
    base = frozenset(p.name for p in target.parts if not (p.block and p.movable))
    base_bytes = sum(p.nbytes for p in target.parts if p.name in base)
    window = window_for(movable_blocks)
    capacity = room - base_bytes - window
    if not movable_blocks:  # nothing to stream: whole, or not at all (unless nothing can move anyway)
        immovable = all(not p.movable for p in target.parts)
        return Plan(evict, base, (), 0, immovable or base_bytes <= room, base_bytes)
    if capacity < 0:
        streamed = tuple(p.name for p in movable_blocks)
        return Plan(evict, base, streamed, window, False, base_bytes + window)
    chosen = set() if stream_all else spread_resident(movable_blocks, capacity)
    streamed = tuple(p.name for p in movable_blocks if p.name not in chosen)
    window = window_for(p for p in movable_blocks if p.name in streamed)
    if not streamed:  # everything fitted after all (rounding): no window needed
        window = 0
    resident = base | frozenset(chosen)
    needed = base_bytes + sum(p.nbytes for p in movable_blocks if p.name in chosen) + window
    return Plan(evict, resident, streamed, window, True, needed)


def spread_resident(blocks: Sequence[PartSpec], capacity: int) -> set[str]:
    """Blocks kept resident within `capacity` bytes, spread evenly over the execution order.

    A byte-weighted Bresenham walk: block i stays resident when the resident bytes so far would not run
    ahead of the fraction capacity/total of the bytes walked. Rounding leftovers are then filled in order.
    """
    total = sum(b.nbytes for b in blocks)
    if total <= capacity:
        return {b.name for b in blocks}
    fraction = capacity / total if total else 0.0
    chosen: set[str] = set()
    resident = walked = 0
    for block in blocks:
        walked += block.nbytes
        if resident + block.nbytes <= fraction * walked + block.nbytes / 2 and resident + block.nbytes <= capacity:
            chosen.add(block.name)
            resident += block.nbytes
    for block in blocks:
        if block.name not in chosen and resident + block.nbytes <= capacity:
            chosen.add(block.name)
            resident += block.nbytes
    return chosen


def plan_shrink(target: ModelEntry, free_bytes: int) -> Plan:
    """The target with at least `free_bytes` fewer device bytes (out-of-memory recovery), still running."""
    budget = max(target.device_bytes - free_bytes, 0)
    return _partial(target, budget, (), stream_all=False)
