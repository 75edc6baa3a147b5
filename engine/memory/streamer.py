"""Hooks that stream a partially loaded model's blocks through the window while it runs.

A forward pre-hook on each streamed block asks the schedule what to do (wait for this block, fetch the next
one) and a forward hook releases the block; hooks on the root mark the start and end of a model call so the
first block is prefetched early and the order is learned. The transport does the copying.
"""

from __future__ import annotations

from typing import Any

from engine.memory.layout import Part
from engine.memory.schedule import Done, Fetch, PrefetchSchedule, Step, Wait


class Streamer:
    def __init__(self, root: Any, streamed: list[Part], transport: Any) -> None:
        self.parts = {p.name: p for p in streamed}
        self.schedule = PrefetchSchedule([p.name for p in streamed])
        self.transport = transport
        self._handles: list[Any] = []
        self._handles.append(root.register_forward_pre_hook(self._call_start))
        self._handles.append(root.register_forward_hook(self._call_end))
        for part in streamed:
            self._handles.append(part.module.register_forward_pre_hook(self._block_start(part.name)))
            self._handles.append(part.module.register_forward_hook(self._block_end(part.name)))

    @property
    def window_bytes(self) -> int:
        return 2 * self.transport.slot_bytes

    def _run(self, steps: list[Step]) -> None:
        for step in steps:
            if isinstance(step, Fetch):
                self.transport.fetch(step.block, step.slot)
            elif isinstance(step, Wait):
                self.transport.wait(step.block, step.slot)
            elif isinstance(step, Done):
                self.transport.done(step.block, step.slot)

    def _call_start(self, module: Any, args: Any) -> None:
        self._run(self.schedule.start_call())

    def _call_end(self, module: Any, args: Any, output: Any) -> None:
        self.schedule.end_call()

    def _block_start(self, name: str):
        def hook(module: Any, args: Any) -> None:
            self._run(self.schedule.start_block(name))

        return hook

    def _block_end(self, name: str):
        def hook(module: Any, args: Any, output: Any) -> None:
            self._run(self.schedule.end_block(name))

        return hook

    def close(self) -> None:
        """Remove the hooks and put every parameter back at its off-device home."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.transport.close()
