"""Carrying streamed blocks onto the device: the steps of `schedule.PrefetchSchedule` made real.

- `SlotTransport`: two preallocated device buffers (the slots). A block's weights are packed once into one
  flat host buffer (pinned on CUDA, so the copy is asynchronous) and copied into a slot as one transfer;
  the block's parameters then point at views of the slot while it runs. With CUDA streams the copy runs on a
  side stream: it waits for the slot's previous block to finish (an event recorded on the compute stream),
  and the compute stream waits for the copy (another event). Without streams the copy is synchronous,
  which is how the same logic is tested on the CPU.
A parameter that someone else pointed at another tensor while it was off the device (engine.models.lora.patch
swaps in patched weights) is respected: that tensor is what gets copied, and it is what the parameter
points at again after the block. Nothing here computes a patch.
- `MappedTransport`: for a CPU device. Parameters stay views of the memory-mapped file; fetching asks the
  kernel to read the next block's pages ahead, finishing a block hands its pages back, so resident memory
  holds only the resident parts and about two blocks.
"""

from __future__ import annotations

from typing import Any

from engine.memory.layout import Part
from engine.memory.mapped import prefetch_pages, release_pages

ALIGN = 256  # byte alignment of every tensor inside a slot (fast kernels, valid dtype views)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def packed_size(part: Part) -> int:
    return sum(_aligned(s.nbytes) for s in part.params)


class CudaStreams:
    """The CUDA calls the slot transport needs, in one place (and replaceable by a recorder in tests)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.side = torch.cuda.Stream(device=device)

    def event(self) -> Any:
        return self.torch.cuda.Event()

    def current(self) -> Any:
        return self.torch.cuda.current_stream(self.device)

    def on_side(self) -> Any:
        return self.torch.cuda.stream(self.side)

    def join(self) -> None:
        """The compute stream waits for everything queued on the side stream so far."""
        self.current().wait_stream(self.side)


class SlotTransport:
    def __init__(self, device: Any, parts: dict[str, Part], streams: Any = None, pin: bool = False) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.parts = parts
        self.streams = streams
        self.slot_bytes = max(packed_size(p) for p in parts.values())
        self.buffers = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=device) for _ in range(2)]
        self.flat: dict[str, Any] = {}
        self.restore: dict[str, list[Any]] = {}  # block -> what its parameters pointed at before it ran
        self.copied: dict[int, list[int]] = {}  # slot -> data pointers its current contents were copied from
        if pin:
            for name, part in parts.items():
                self.flat[name] = self._pack(part)
        if streams is not None:
            self.ready = [streams.event() for _ in self.buffers]
            self.free = [streams.event() for _ in self.buffers]
            self.free_recorded = [False, False]

    @property
    def pinned_bytes(self) -> int:
        return sum(f.numel() for f in self.flat.values())

    def _pack(self, part: Part) -> Any:
        """One pinned buffer holding the block's weights; each parameter's home becomes a view of it."""
        torch = self.torch
        flat = torch.empty(packed_size(part), dtype=torch.uint8, pin_memory=True)
        offset = 0
        for slot in part.params:
            view = _view(flat, offset, slot.param)
            view.copy_(slot.off_device())
            slot.home = view  # replaces an owned copy (freed): never held twice
            slot.param.data = view
            offset += _aligned(slot.nbytes)
        release_pages(s.source for s in part.params if s.source is not None)  # the file keeps a clean copy
        return flat

    def fetch(self, block: str, slot_index: int) -> None:
        part = self.parts[block]
        buffer = self.buffers[slot_index]
        if self.streams is None:
            self.copied[slot_index] = self._copy(part, buffer, non_blocking=False)
            return
        with self.streams.on_side():
            if self.free_recorded[slot_index]:
                self.streams.side.wait_event(self.free[slot_index])
            self.copied[slot_index] = self._copy(part, buffer, non_blocking=True)
            self.ready[slot_index].record(self.streams.side)

    def _copy(self, part: Part, buffer: Any, non_blocking: bool) -> list[int]:
        """Copy the block into `buffer`; returns the data pointers copied from, one per parameter."""
        flat = self.flat.get(part.name)
        sources = [s.param.data for s in part.params]  # our home, or a patched tensor swapped in
        if flat is not None and all(s.holds_own() for s in part.params):
            buffer[: flat.numel()].copy_(flat, non_blocking=non_blocking)
            return [t.data_ptr() for t in sources]
        offset = 0
        for slot, source in zip(part.params, sources):
            _view(buffer, offset, slot.param).copy_(source, non_blocking=non_blocking and source.is_pinned())
            offset += _aligned(slot.nbytes)
        return [t.data_ptr() for t in sources]

    def wait(self, block: str, slot_index: int) -> None:
        if self.streams is not None:
            self.streams.current().wait_event(self.ready[slot_index])
        buffer = self.buffers[slot_index]
        offset = 0
        restore = self.restore[block] = []
        copied = self.copied.get(slot_index) or []
        for index, slot in enumerate(self.parts[block].params):
            current = slot.param.data
            restore.append(current)
            view = _view(buffer, offset, slot.param)
            if index >= len(copied) or copied[index] != current.data_ptr():
                view.copy_(current)  # swapped (patched) after the prefetch: copy what is there now
            slot.param.data = view
            offset += _aligned(slot.nbytes)

    def done(self, block: str, slot_index: int) -> None:
        for slot, before in zip(self.parts[block].params, self.restore.pop(block, [])):
            slot.param.data = before
        if self.streams is not None:
            self.free[slot_index].record(self.streams.current())
            self.free_recorded[slot_index] = True

    def close(self) -> None:
        """Parameters of a block still running (an exception) back; the slots are freed with this object,
        after any copy still in flight on the side stream (a prefetch nobody waited for)."""
        for block in list(self.restore):
            self._put_back(block)
        if self.streams is not None:
            self.streams.join()
        self.buffers = []

    def _put_back(self, block: str) -> None:
        for slot, before in zip(self.parts[block].params, self.restore.pop(block, [])):
            slot.param.data = before


class MappedTransport:
    """CPU device, file-backed blocks: page read-ahead before, page release after."""

    def __init__(self, parts: dict[str, Part]) -> None:
        self.parts = parts
        self.slot_bytes = max(p.nbytes for p in parts.values())
        self.pinned_bytes = 0

    def fetch(self, block: str, slot_index: int) -> None:
        prefetch_pages(s.source for s in self.parts[block].params)

    def wait(self, block: str, slot_index: int) -> None:
        pass  # the parameters already are views of the file: reading them is the transfer

    def done(self, block: str, slot_index: int) -> None:
        release_pages(s.source for s in self.parts[block].params)

    def close(self) -> None:
        for part in self.parts.values():
            release_pages(s.source for s in part.params)


def _view(buffer: Any, offset: int, like: Any) -> Any:
    nbytes = like.numel() * like.element_size()
    return buffer[offset: offset + nbytes].view(like.dtype).view(like.shape)
