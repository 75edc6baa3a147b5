"""Errors the memory manager raises: each says what was needed, what there was, and the flag that helps.

They reach clients as the `exception_message` of an execution_error; the server keeps running.
"""

from __future__ import annotations

from engine.memory.budget import advice, budget_hint, format_bytes


class DeviceMemoryError(MemoryError):
    """Base class: the engine could not fit a model's work into the device memory available."""


class NotEnoughMemoryError(DeviceMemoryError):
    """Even the smallest placement (base parts and the streaming window) exceeds the budget."""

    def __init__(self, label: str, needed: int, budget: int, mode: str, device: str) -> None:
        self.needed, self.budget = needed, budget
        super().__init__(
            f"{label} needs at least {format_bytes(needed)} of {device} memory for its always-resident "
            f"parts and streaming window, but the budget for weights is {format_bytes(max(budget, 0))} "
            f"(mode {mode}). Free memory (POST /free), set {budget_hint(needed + (1 << 30))} or more, "
            f"or {advice(mode, budget)}.")


class OutOfMemoryError(DeviceMemoryError):
    """The device ran out while a model ran, and the one retry (caches freed, more blocks streamed)
    failed too, or nothing more could be streamed."""

    def __init__(self, label: str, device: str, mode: str, requested: int | None, free: int | None,
                 total: int | None, resident: int, streamed: int, retried: bool, budget: int | None) -> None:
        self.requested = requested
        tried = f"tried to allocate {format_bytes(requested)}" if requested else "an allocation failed"
        have = f" with {format_bytes(free)} free of {format_bytes(total)}" if free is not None else ""
        weights = f"{format_bytes(resident)} of weights resident"
        if streamed:
            weights += f", {format_bytes(streamed)} streamed"
        again = ("after freeing caches, evicting other models and streaming more blocks, the retry failed "
                 "too" if retried else "this allocation was made outside the model's own call, so it was not "
                 "retried")
        super().__init__(
            f"out of {device} memory running {label}: {tried}{have} ({weights}); {again}. "
            f"{advice(mode, budget)[0].upper()}{advice(mode, budget)[1:]}.")


class ModelFileChangedError(RuntimeError):
    """A memory-mapped model file was modified in place after loading: its weights can no longer be read."""

    def __init__(self, label: str, paths: list[str]) -> None:
        super().__init__(f"{label}: model file {', '.join(paths)} was modified on disk after it was loaded; "
                         "its weights are read from the file while the model is not fully in memory. Load "
                         "the model again (POST /free with free_memory, then re-run); replace model files by "
                         "writing a new file and renaming it over the old one.")
