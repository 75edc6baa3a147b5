"""The backend contract: what the server's dispatcher (`engine.server.worker.PromptWorker`) asks of a backend.

The dispatcher owns the queue, the websocket and the history; a backend only runs prompts:

- `wait_for_capacity(timeout)`: True once another prompt may start (a free worker).
- `choose(pending)`: which pending prompt starts next (per-client fairness); `choose = None` for queue order.
- `submit(item, sink)`: reserve a worker for a validated prompt; returns a `PromptRun` whose `wait()` runs it,
  streams its events into `sink` as they happen (`sink.event(type, data)`, `sink.preview(bytes, format,
  node_id)`) and returns the `ExecutionResult`, or raises `WorkerLost` when the worker died under it.
- `interrupt(prompt_id=None)`: interrupt that prompt (every running prompt when None); a prompt that was
  submitted but has not started yet is stopped as soon as it starts.
- `free(unload_models, free_memory)`, `placement(prompt_id)` (which worker runs or ran it), `placements()`
  (where each running prompt runs), `workers_info()` (for /system_stats; None: the server's own devices),
  `start()`, `close()`.

`concurrent` tells the dispatcher whether `wait()` may run in threads of its own (several workers) or must
run in the dispatcher's thread, one prompt at a time.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol


class RunSink(Protocol):
    """Where a running prompt's events go (the server publishes them on the websocket)."""

    def event(self, event: str, data: dict[str, Any]) -> None: ...

    def preview(self, image_bytes: bytes, image_format: str, node_id: str) -> None: ...


class PromptRun(Protocol):
    def wait(self) -> Any: ...  # -> engine.core.executor.ExecutionResult


class WorkerLost(Exception):
    """The worker running a prompt died (process killed, machine lost).

    `started` tells whether the worker had begun the prompt: a prompt that never started is simply queued
    again; one that did is run once more elsewhere and marked resumed.
    """

    def __init__(self, worker: str, started: bool, reason: str) -> None:
        super().__init__(f"worker {worker} was lost {'while running' if started else 'before starting'} the "
                         f"prompt: {reason}")
        self.worker = worker
        self.started = started
        self.reason = reason


class Backend(Protocol):
    name: str
    concurrent: bool
    choose: Callable[[list[Any]], Any] | None

    def start(self) -> None: ...

    def close(self) -> None: ...

    def wait_for_capacity(self, timeout: float) -> bool: ...

    def submit(self, item: Any, sink: RunSink) -> PromptRun: ...

    def interrupt(self, prompt_id: str | None = None) -> bool: ...

    def free(self, unload_models: bool, free_memory: bool) -> None: ...

    def placement(self, prompt_id: str) -> dict[str, Any] | None: ...

    def placements(self) -> dict[str, dict[str, Any]]: ...

    def workers_info(self) -> list[dict[str, Any]] | None: ...
