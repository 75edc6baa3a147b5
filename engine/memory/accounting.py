"""A simulated device that only counts bytes, and models made of named parts that "run" on it.

`AccountingBackend` is a drop-in backend for `engine.memory.manager.MemoryManager`: the manager's real placement
logic (budget, eviction, partial loading, streaming schedule, out-of-memory retry) runs unchanged, and the
accounting device checks what a GPU would enforce. Every allocation beyond capacity raises
`SimulatedOutOfMemory`; every part is held in exactly one place (device, host RAM or disk) and a move that
would leave it in two raises; a block that runs without being on the device raises. The log records
evictions, loads, fetches and runs in order, so tests can assert the order of events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from engine.memory.layout import BASE
from engine.memory.plan import PartSpec, window_for
from engine.memory.schedule import Done, Fetch, PrefetchSchedule, Wait

TIERS = ("device", "host", "disk")


class SimulatedOutOfMemory(MemoryError):
    def __init__(self, requested: int, free: int) -> None:
        self.requested = requested
        super().__init__(f"simulated device out of memory: tried to allocate {requested} bytes with {free} free")


class AccountingDevice:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.allocations: dict[tuple, int] = {}
        self.peak = 0

    @property
    def used(self) -> int:
        return sum(self.allocations.values())

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def allocate(self, key: tuple, nbytes: int) -> None:
        if nbytes > self.free:
            raise SimulatedOutOfMemory(nbytes, self.free)
        self.allocations[key] = self.allocations.get(key, 0) + nbytes
        self.peak = max(self.peak, self.used)

    def release(self, key: tuple) -> None:
        self.allocations.pop(key, None)


class SimModel:
    """A model of a base and blocks of given byte sizes; calling it runs the blocks in order."""

    def __init__(self, name: str, base_bytes: int, block_bytes: list[int], *, file_backed: bool = True) -> None:
        self.name = name
        self.file_backed = file_backed
        self.parts = [PartSpec(BASE, base_bytes)] + [PartSpec(f"block{i}", n, block=True)
                                                      for i, n in enumerate(block_bytes)]
        self.backend: AccountingBackend | None = None
        self.calls = 0

    def forward(self, activation_bytes: int = 0) -> int:
        if self.backend is None:
            raise RuntimeError(f"{self.name} was never given to a memory manager")
        self.backend.run(self, activation_bytes)
        self.calls += 1
        return self.calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)


@dataclass
class _Placed:
    resident: set[str] = field(default_factory=set)
    streamed: tuple[str, ...] = ()
    schedule: PrefetchSchedule | None = None
    slots: dict[int, str] = field(default_factory=dict)


class AccountingBackend:
    device = "accounting"

    def __init__(self, device: AccountingDevice, *, cpu_device: bool = False) -> None:
        self.accounting = device
        self.cpu_device = cpu_device  # parts not backed by a file cannot leave (RAM is the device)
        self.tiers: dict[str, set[tuple[str, str]]] = {t: set() for t in TIERS}
        self.log: list[tuple] = []
        self._placed: dict[str, _Placed] = {}

    # ----- backend interface used by MemoryManager
    def describe(self, model: SimModel) -> tuple[tuple[PartSpec, ...], str, str]:
        if model.backend is not self:
            model.backend = self
            self._placed[model.name] = _Placed()
            for part in model.parts:
                home = self._home(model)
                self.tiers[home].add((model.name, part.name))
                if home == "device":  # immovable RAM on a CPU device: counted from the start
                    self.accounting.allocate(("part", model.name, part.name), part.nbytes)
        movable = model.file_backed or not self.cpu_device
        parts = tuple(PartSpec(p.name, p.nbytes, p.block, movable) for p in model.parts)
        return parts, model.name, f"{model.name}.safetensors" if model.file_backed else ""

    def apply(self, model: SimModel, resident: frozenset[str], streamed: tuple[str, ...]) -> None:
        placed = self._placed[model.name]
        if placed.streamed and placed.streamed != tuple(streamed):
            self.accounting.release(("window", model.name))
            placed.streamed, placed.schedule, placed.slots = (), None, {}
        for part in model.parts:  # frees first, so that the device never holds more than the plan
            if part.name not in resident:
                self._move(model, part, self._home(model))
        for part in model.parts:
            if part.name in resident:
                self._move(model, part, "device")
        placed.resident = set(resident)
        if streamed and not placed.streamed:
            window = window_for(p for p in model.parts if p.name in streamed)
            self.accounting.allocate(("window", model.name), window)
            placed.streamed = tuple(streamed)
            placed.schedule = PrefetchSchedule(list(streamed))
            self.log.append(("stream", model.name, tuple(streamed)))

    def offload(self, model: SimModel) -> None:
        placed = self._placed[model.name]
        self.accounting.release(("window", model.name))
        placed.streamed, placed.schedule, placed.slots = (), None, {}
        for part in model.parts:
            self._move(model, part, self._home(model))
        placed.resident = set()

    def wrap(self, model: SimModel, make: Callable[[str, Callable], Callable]) -> None:
        if "forward" not in vars(model):
            model.forward = make("forward", model.forward)  # type: ignore[method-assign]

    def changed_files(self, model: SimModel) -> list[str]:
        return []

    def host_bytes(self, model: SimModel) -> int:
        return sum(p.nbytes for p in model.parts if (model.name, p.name) in self.tiers["host"])

    def device_memory(self) -> tuple[int, int]:
        return self.accounting.capacity, self.accounting.free

    def empty_cache(self) -> None:
        self.log.append(("empty_cache",))

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, SimulatedOutOfMemory)

    def peak_bytes(self) -> int:
        return self.accounting.peak

    # ----- the simulation
    def _home(self, model: SimModel) -> str:
        if model.file_backed:
            return "disk"
        return "device" if self.cpu_device else "host"

    def where(self, model: SimModel, part: str) -> str:
        places = [t for t in TIERS if (model.name, part) in self.tiers[t]]
        if len(places) != 1:
            raise AssertionError(f"{model.name}/{part} is held in {places or 'no place'}")
        return places[0]

    def _move(self, model: SimModel, part: PartSpec, tier: str) -> None:
        current = self.where(model, part.name)
        if current == tier:
            return
        key = ("part", model.name, part.name)
        if tier == "device":
            self.accounting.allocate(key, part.nbytes)
        self.tiers[current].discard((model.name, part.name))
        self.tiers[tier].add((model.name, part.name))
        if current == "device":
            self.accounting.release(key)
        self.log.append(("load" if tier == "device" else "unload", model.name, part.name))
        self.where(model, part.name)

    def run(self, model: SimModel, activation_bytes: int) -> None:
        placed = self._placed[model.name]
        if BASE not in placed.resident:
            raise RuntimeError(f"{model.name} ran with its base off the device")
        schedule = placed.schedule
        if schedule is not None:
            self._steps(model, placed, schedule.start_call())
        self.accounting.allocate(("activations", model.name), activation_bytes)
        try:
            for part in model.parts[1:]:
                if part.name in placed.resident:
                    self.log.append(("run", model.name, part.name))
                elif schedule is not None and part.name in placed.streamed:
                    self._steps(model, placed, schedule.start_block(part.name))
                    self.log.append(("run", model.name, part.name))
                    self._steps(model, placed, schedule.end_block(part.name))
                else:
                    raise RuntimeError(f"{model.name}/{part.name} ran while neither resident nor streamed")
        finally:
            self.accounting.release(("activations", model.name))
        if schedule is not None:
            schedule.end_call()

    def _steps(self, model: SimModel, placed: _Placed, steps: list) -> None:
        for step in steps:
            if isinstance(step, Fetch):
                placed.slots[step.slot] = step.block
                self.log.append(("fetch", model.name, step.block, step.slot, step.prefetch))
            elif isinstance(step, Wait) and placed.slots.get(step.slot) != step.block:
                raise RuntimeError(f"{model.name}/{step.block} waited on slot {step.slot} holding "
                                   f"{placed.slots.get(step.slot)}")
            elif isinstance(step, Done):
                pass
