"""Moving real torch modules between the device, owned CPU memory and their mapped files.

The manager decides (engine.memory.plan); this carries the decision out, part by part and tensor by tensor,
so a model never exists twice in memory: a weight copied onto the device drops its owned CPU copy (a
file-backed weight keeps only its file view, which costs nothing), and a weight leaving the device either
re-points at its file view or is copied home. LoRA-patched weights are swapped in by
`engine.models.lora.patch`, not here: whatever tensor a parameter points at is what gets moved.

CUDA-only steps (pinned packing, side-stream copies) run only when the device is CUDA; on the CPU, the
device is RAM, resident file-backed parts keep their pages and streamed parts give them back after each
block (see transports.py). Objects that are not `nn.Module`s but have `.to()` are moved whole.
"""

from __future__ import annotations

import gc
import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.memory.system_ram import ram_info
from engine.memory.layout import BASE, Part, buffers_of, part_specs, source_of, split_module
from engine.memory.mapped import changed_files, release_pages
from engine.memory.plan import PartSpec
from engine.memory.streamer import Streamer
from engine.memory.transports import CudaStreams, MappedTransport, SlotTransport

WRAPPED_METHODS = ("forward", "encode", "decode")  # entry points that may be retried after out-of-memory
PIN_HEADROOM = 2 << 30  # RAM left free when deciding whether streamed blocks may be pinned


@dataclass
class _State:
    parts: list[Part]
    resident: set[str] = field(default_factory=set)
    streamed: tuple[str, ...] = ()
    streamer: Streamer | None = None
    opaque: bool = False

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)


class TorchBackend:
    def __init__(self, device: Any, *, offload_device: Any = "cpu", cpu_streaming: str = "mapped",
                 pin_memory: bool | None = None, streams_factory: Callable[[Any], Any] | None = None) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())  # tensors report an index
        self.offload_device = torch.device(offload_device)
        self.is_cuda = self.device.type == "cuda"
        if cpu_streaming not in ("mapped", "slots"):
            raise ValueError(f"cpu_streaming must be 'mapped' or 'slots', got {cpu_streaming!r}")
        self.cpu_streaming = cpu_streaming
        self.pin_memory = self.is_cuda if pin_memory is None else pin_memory
        self.streams_factory = streams_factory or (CudaStreams if self.is_cuda else None)
        self._states: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()

    # ----- what a model is made of
    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def describe(self, module: Any) -> tuple[tuple[PartSpec, ...], str, str]:
        """(parts in execution order, label, source file) of `module`; remembers its layout."""
        state = self._state(module)
        label = type(module).__name__
        if state.opaque:
            return (PartSpec(BASE, _opaque_nbytes(module), block=False),), label, ""
        movable_on_cpu = self.on_cpu and self.cpu_streaming == "mapped"
        return part_specs(state.parts, cpu_device=movable_on_cpu), label, source_of(state.parts)

    def _state(self, module: Any) -> _State:
        state = self._states.get(module)
        if state is None:
            if isinstance(module, self.torch.nn.Module):
                state = _State(parts=split_module(module))
            else:
                state = _State(parts=[], opaque=True)
            self._states[module] = state
        return state

    # ----- placement
    def apply(self, module: Any, resident: frozenset[str], streamed: tuple[str, ...]) -> None:
        """Make exactly `resident` parts live on the device and `streamed` stream; the rest off the device."""
        state = self._state(module)
        if state.opaque:
            if resident and not state.resident:
                module.to(self.device)
                state.resident = {BASE}
            return
        if state.streamer is not None and tuple(streamed) != state.streamed:
            self._close_streamer(state)
        for name in state.resident - set(resident):  # make room before anything is allocated
            self._off(state.part(name))
        state.resident &= set(resident)
        self._buffers_to(module, self.device)
        for part in state.parts:
            if part.name in resident and part.name not in state.resident:
                self._on(part)
                state.resident.add(part.name)
        if streamed and state.streamer is None:
            parts = [state.part(name) for name in streamed]
            for part in parts:
                self._off(part)
            state.streamer = Streamer(module, parts, self._transport(parts))
            state.streamed = tuple(streamed)

    def offload(self, module: Any) -> None:
        state = self._state(module)
        if state.opaque:
            if state.resident:
                module.to(self.offload_device)
                state.resident = set()
            return
        self._close_streamer(state)
        for name in list(state.resident):
            self._off(state.part(name))
        state.resident.clear()
        self._buffers_to(module, self.offload_device)

    def _close_streamer(self, state: _State) -> None:
        if state.streamer is not None:
            state.streamer.close()
            state.streamer = None
            for name in state.streamed:  # packed (pinned) copies of file-backed weights are dropped
                for slot in state.part(name).params:
                    if slot.source is not None:
                        slot.home = None
                        slot.param.data = slot.source
            state.streamed = ()

    def _on(self, part: Part) -> None:
        for slot in part.params:
            current = slot.param.data
            if current.device == self.device and not (self.on_cpu and slot.holds_own()):
                continue  # already on the device (copied, or a patched tensor swapped in)
            weight = slot.off_device()
            if not self.on_cpu:
                weight = weight.to(self.device, non_blocking=weight.is_pinned())
                if slot.source is not None:
                    release_pages([slot.source])  # pages touched by the copy: the file keeps the clean copy
                slot.home = None  # the device now holds the only owned copy
            slot.param.data = weight

    def _off(self, part: Part) -> None:
        for slot in part.params:
            current = slot.param.data
            if not self.on_cpu and current.device.type != "cpu" and slot.off_device() is None:
                slot.home = current.to(self.offload_device)  # the only copy: bring it home
            slot.param.data = slot.off_device()
            if slot.source is not None and slot.home is None:
                release_pages([slot.source])

    def _buffers_to(self, module: Any, device: Any) -> None:
        for owner, attr, buf in buffers_of(module):
            if buf.device != device:
                owner._buffers[attr] = buf.to(device)

    def _transport(self, parts: list[Part]) -> Any:
        by_name = {p.name: p for p in parts}
        if self.on_cpu and self.cpu_streaming == "mapped":
            return MappedTransport(by_name)
        streams = self.streams_factory(self.device) if self.streams_factory is not None else None
        # pinned copies of file-backed weights are new RAM; owned weights are replaced by theirs
        new_bytes = sum(slot.nbytes for part in parts for slot in part.params if slot.home is None)
        pin = self.pin_memory and _ram_available() - new_bytes > PIN_HEADROOM
        return SlotTransport(self.device, by_name, streams=streams, pin=pin)

    # ----- bookkeeping for stats and safety
    def host_bytes(self, module: Any) -> int:
        """Owned CPU memory holding this model's weights beside the device (file-backed weights: none).
        On a CPU device that memory is the device itself and is counted there."""
        state = self._states.get(module)
        if state is None or state.opaque or self.on_cpu:
            return 0
        return sum(slot.nbytes for part in state.parts for slot in part.params if slot.home is not None)

    def changed_files(self, module: Any) -> list[str]:
        state = self._states.get(module)
        if state is None or state.opaque:
            return []
        return changed_files(slot.source for part in state.parts for slot in part.params if slot.source is not None)

    def wrap(self, module: Any, make: Callable[[str, Callable], Callable]) -> None:
        for name in WRAPPED_METHODS:
            original = getattr(module, name, None)
            if callable(original) and name not in vars(module):
                vars(module)[name] = make(name, original)

    # ----- the device itself
    def device_memory(self) -> tuple[int | None, int | None]:
        """(total, free) bytes of the device; free includes the allocator's cached but unused memory."""
        if self.is_cuda:
            try:
                free, total = self.torch.cuda.mem_get_info(self.device)
                cached = self.torch.cuda.memory_reserved(self.device) - self.torch.cuda.memory_allocated(self.device)
            except (RuntimeError, AssertionError, ValueError):
                return None, None
            return int(total), int(free + cached)
        if self.on_cpu:
            total, available = ram_info()
            return total, available
        return None, None

    def empty_cache(self) -> None:
        gc.collect()
        if self.is_cuda and self.torch.cuda.is_available():
            self.torch.cuda.empty_cache()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        oom_type = getattr(self.torch.cuda, "OutOfMemoryError", None)
        if oom_type is not None and isinstance(exc, oom_type):
            return True
        if isinstance(exc, MemoryError):
            return True
        text = str(exc).lower()
        return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)

    def peak_bytes(self) -> int | None:
        if not self.is_cuda:
            return None
        return int(self.torch.cuda.max_memory_allocated(self.device))


_ALLOC = re.compile(r"tried to allocate ([\d.]+)\s*(bytes|kib|mib|gib|b)?", re.IGNORECASE)
_UNITS = {"bytes": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, None: 1}


def requested_bytes(exc: BaseException) -> int | None:
    """The allocation that failed, from torch's CUDA or CPU out-of-memory message."""
    match = _ALLOC.search(str(exc))
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower() or None])


def _opaque_nbytes(module: Any) -> int:
    total = 0
    try:
        for tensor in module.parameters():
            numel, size = getattr(tensor, "numel", None), getattr(tensor, "element_size", None)
            if callable(numel) and callable(size):
                total += numel() * size()
    except (AttributeError, TypeError):
        return 0
    return total


def _ram_available() -> int:
    return ram_info()[1] or 0
