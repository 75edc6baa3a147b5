"""How the server runs a queued prompt: an executor backend.

The server's dispatcher (`engine.server.worker.PromptWorker`) owns the queue, the websocket and the history;
a backend only runs prompts. The contract:

- `wait_for_capacity(timeout)`: True once another prompt may start (a free worker).
- `choose(pending)`: which pending prompt starts next (per-client fairness), or None for queue order.
- `submit(item, sink)`: reserve a worker for a validated prompt; returns a `PromptRun` whose `wait()` runs it,
  streams its events into `sink` as they happen (`sink.event(type, data)`, `sink.preview(bytes, format,
  node_id)`) and returns the `ExecutionResult`, or raises `WorkerLost` when the worker died under it.
- `interrupt(prompt_id=None)`: interrupt that running prompt (all running prompts when None); a prompt that
  was submitted but has not started yet is stopped as soon as it starts.
- `free(unload_models, free_memory)`, `placement(prompt_id)` (which worker runs or ran it),
  `workers_info()` (for /system_stats), `start()`, `close()`.

`InProcessBackend` (the default) runs one prompt at a time on the server's own executor, in the dispatcher's
thread. `engine.backends.ray.backend.RayBackend` runs prompts on Ray actors, one per device; Ray is imported
only when that backend is asked for (`make_backend`).
"""

from __future__ import annotations

import gc
import io
import logging
import sys
import threading
from typing import Any, Protocol

log = logging.getLogger(__name__)
EXECUTORS = ("inprocess", "ray")


class RunSink(Protocol):
    """Where a running prompt's events go (the server publishes them on the websocket)."""

    def event(self, event: str, data: dict[str, Any]) -> None: ...

    def preview(self, image_bytes: bytes, image_format: str, node_id: str) -> None: ...


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


class PromptRun(Protocol):
    def wait(self) -> Any: ...  # -> engine.core.executor.ExecutionResult


class InProcessRun:
    def __init__(self, backend: "InProcessBackend", item: Any, sink: RunSink) -> None:
        self.backend = backend
        self.item = item
        self.sink = sink

    def wait(self) -> Any:
        return self.backend.execute(self.item, self.sink)


class InProcessBackend:
    """The server's own executor: one prompt at a time, run in the calling (dispatcher) thread."""

    name = "inprocess"
    concurrent = False

    def __init__(self, runtime: Any, preview_size: int = 512) -> None:
        self.runtime = runtime
        self.preview_size = preview_size
        self._lock = threading.Lock()
        self._running: str | None = None
        self._sink: RunSink | None = None
        self._cancel: set[str] = set()  # survives the executor clearing its flag when a prompt starts
        runtime.executor.on_preview = self._on_preview

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def wait_for_capacity(self, timeout: float) -> bool:
        return True  # the dispatcher runs each prompt to its end before taking the next

    choose = None  # queue order

    def submit(self, item: Any, sink: RunSink) -> InProcessRun:
        return InProcessRun(self, item, sink)

    def execute(self, item: Any, sink: RunSink) -> Any:
        executor = self.runtime.executor

        def on_event(event: str, data: dict[str, Any]) -> None:
            if event == "execution_start" and item.prompt_id in self._cancel:
                executor.interrupt.set()
            sink.event(event, data)

        with self._lock:
            self._running, self._sink = item.prompt_id, sink
        try:
            return executor.execute(item.prompt, item.prompt_id, item.outputs_to_execute, on_event=on_event,
                                    extra_data=item.full_extra_data())
        finally:
            with self._lock:
                self._running, self._sink = None, None
                self._cancel.discard(item.prompt_id)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        with self._lock:
            if prompt_id is not None:
                if self._running != prompt_id:
                    return False
                self._cancel.add(prompt_id)
            self.runtime.executor.interrupt.set()
            return self._running is not None

    def free(self, unload_models: bool, free_memory: bool) -> None:
        free_runtime(self.runtime, unload_models, free_memory)

    def placement(self, prompt_id: str) -> dict[str, Any] | None:
        return None

    def placements(self) -> dict[str, dict[str, Any]]:
        return {}

    def workers_info(self) -> list[dict[str, Any]] | None:
        return None  # /system_stats lists the server's own devices

    def _on_preview(self, prompt_id: str, node_id: str, preview: Any) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            image_bytes, image_format = encode_preview(preview, self.preview_size)
        except Exception:
            log.debug("preview could not be encoded", exc_info=True)
            return
        sink.preview(image_bytes, image_format, node_id)


def free_runtime(runtime: Any, unload_models: bool, free_memory: bool) -> None:
    """/free: unload models, and with free_memory also drop every cached output."""
    if free_memory:
        runtime.cache.clear()
    if unload_models or free_memory:
        models = getattr(runtime, "models", None)
        if models is not None and getattr(models, "loaded", True):  # never create a manager to empty it
            models.offload_all()
        gc.collect()
        torch = sys.modules.get("torch")  # only if something already loaded it
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def encode_preview(preview: Any, max_size: int) -> tuple[bytes, str]:
    """A preview (PIL image, (format, PIL image) pair, IMAGE tensor or encoded bytes) -> (JPEG bytes, format)."""
    if isinstance(preview, (bytes, bytearray)):
        return bytes(preview), "JPEG"
    if isinstance(preview, tuple) and len(preview) >= 2:
        preview = preview[1]
    if hasattr(preview, "detach"):  # an IMAGE tensor: take the first image of the batch
        from engine.media.images import tensor_to_pil  # noqa: PLC0415 - torch is loaded already here

        tensor = preview[0] if preview.ndim == 4 else preview
        preview = tensor_to_pil(tensor)
    picture = preview.convert("RGB")
    picture.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), "JPEG"


def make_backend(runtime: Any, config: Any) -> Any:
    """The backend the server config asks for (`config.executor`); Ray is imported only for "ray"."""
    executor = getattr(config, "executor", "inprocess") or "inprocess"
    preview_size = getattr(config, "preview_size", 512)
    if executor == "inprocess":
        return InProcessBackend(runtime, preview_size)
    if executor == "ray":
        from engine.backends.ray.options import RayOptions  # noqa: PLC0415
        from engine.backends.ray.backend import RayBackend  # noqa: PLC0415 - the optional extra

        return RayBackend(runtime, RayOptions.from_server_config(config), preview_size=preview_size)
    raise ValueError(f"unknown executor {executor!r}; expected one of {list(EXECUTORS)}")
