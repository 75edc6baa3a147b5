"""The order in which streamed blocks are fetched into the two slots of the streaming window.

Device-agnostic: a transport (CUDA side stream, host page prefetch, or the accounting device in tests)
carries out the steps. When a streamed block starts, it is waited for (fetched first if the prefetch
guessed wrong) and the next streamed block in execution order is fetched into the other slot, so its copy
overlaps the running block and the resident blocks after it. After the last block the first one is
prefetched again for the next call (the next denoising step). The order is learned: if a call ran the
streamed blocks in another order, the next call follows that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Fetch:
    block: str
    slot: int
    prefetch: bool  # True: ahead of need; False: the block is needed now (the prefetch missed)


@dataclass(frozen=True)
class Wait:
    block: str
    slot: int


@dataclass(frozen=True)
class Done:
    block: str
    slot: int


Step = Fetch | Wait | Done


class PrefetchSchedule:
    def __init__(self, order: Sequence[str], slots: int = 2) -> None:
        if not order:
            raise ValueError("a prefetch schedule needs at least one streamed block")
        self.order = list(order)
        self.slots: list[str | None] = [None] * max(1, min(slots, len(order)))
        self._last_use = [0] * len(self.slots)
        self._tick = 0
        self._running: dict[str, int] = {}
        self._seen: list[str] = []
        self.misses = 0

    def next_after(self, block: str) -> str:
        index = self.order.index(block)
        return self.order[(index + 1) % len(self.order)]

    def start_call(self) -> list[Step]:
        """At the start of a model call: make sure the first streamed block is on its way."""
        self._seen = []
        first = self.order[0]
        if first in self.slots:
            return []
        return [self._fetch(first, prefetch=True, avoid=None)]

    def start_block(self, block: str) -> list[Step]:
        self._tick += 1
        self._seen.append(block)
        steps: list[Step] = []
        if block not in self.slots:
            self.misses += 1
            steps.append(self._fetch(block, prefetch=False, avoid=None))
        slot = self.slots.index(block)
        self._last_use[slot] = self._tick
        self._running[block] = slot
        steps.append(Wait(block, slot))
        upcoming = self.next_after(block)
        if upcoming != block and upcoming not in self.slots and len(self.slots) > 1:
            steps.append(self._fetch(upcoming, prefetch=True, avoid=slot))
        return steps

    def end_block(self, block: str) -> list[Step]:
        slot = self._running.pop(block, None)
        return [] if slot is None else [Done(block, slot)]

    def end_call(self) -> None:
        """Learn the order actually run (a permutation of the planned one) for the next call."""
        if sorted(self._seen) == sorted(self.order) and self._seen != self.order:
            self.order = list(self._seen)

    def _fetch(self, block: str, prefetch: bool, avoid: int | None) -> Fetch:
        candidates = [i for i in range(len(self.slots)) if i != avoid and self.slots[i] not in self._running]
        if not candidates:
            candidates = [i for i in range(len(self.slots)) if i != avoid]
        slot = min(candidates, key=lambda i: (self.slots[i] is not None, self._last_use[i]))
        self.slots[slot] = block
        self._last_use[slot] = self._tick
        return Fetch(block, slot, prefetch)
