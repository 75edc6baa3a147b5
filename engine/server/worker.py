"""The worker thread: takes prompts from the queue and runs them, never on the event loop.

The server keeps answering /queue, /object_info and the websocket while a long job runs. Executor events are
handed to the hub (which crosses into the loop with `call_soon_threadsafe`). The closing
`executing {node: null}` is held back until the queue has recorded the result, so clients see
execution_success -> status -> executing(null), in ComfyUI's order, and a client reacting to "done" finds the
prompt in /history.
"""

from __future__ import annotations

import gc
import io
import logging
import sys
import threading
import time
import traceback
from typing import Any

from engine.queue import ERROR, INTERRUPTED, SUCCESS, PromptQueue, QueueItem
from engine.server.websocket import EventHub

log = logging.getLogger(__name__)
_STATUS = {"success": SUCCESS, "error": ERROR, "interrupted": INTERRUPTED}


class PromptWorker:
    def __init__(self, runtime: Any, queue: PromptQueue, hub: EventHub, preview_size: int = 512) -> None:
        self.runtime = runtime
        self.queue = queue
        self.hub = hub
        self.preview_size = preview_size
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._item: QueueItem | None = None
        self._node: str | None = None
        self._cancel: set[str] = set()
        self._last_gc = time.monotonic()
        self.runtime.executor.on_preview = self._on_preview

    # ----- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fluxgraph-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.runtime.executor.interrupt.set()
        self.queue.set_flag("stop", True)  # wakes a worker waiting for work
        if self._thread is not None:
            self._thread.join(timeout)

    # ----- what the routes ask
    @property
    def running_prompt_id(self) -> str | None:
        item = self._item
        return item.prompt_id if item else None

    def current_node_for(self, client_id: str) -> str | None:
        item = self._item
        if item is not None and item.extra_data.get("client_id") == client_id:
            return self._node
        return None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is `prompt_id`, when given). Returns whether it did."""
        with self._lock:
            item = self._item
            if prompt_id is not None:
                if item is None or item.prompt_id != prompt_id:
                    return False
                self._cancel.add(prompt_id)  # survives the executor clearing its flag at start
            self.runtime.executor.interrupt.set()
            return item is not None

    # ----- the thread
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.queue.get(timeout=1.0)
            except Exception:  # a closed queue during shutdown
                log.exception("queue.get failed")
                return
            flags = self.queue.take_flags()
            if flags:
                self._free(flags)
            if item is None or self._stop.is_set():
                continue
            self._run(item)
            if time.monotonic() - self._last_gc > 10.0:  # collect between prompts, not after every one
                gc.collect()
                self._last_gc = time.monotonic()

    def _run(self, item: QueueItem) -> None:
        client_id = item.extra_data.get("client_id")
        done_message: list[dict[str, Any]] = []

        def on_event(event: str, data: dict[str, Any]) -> None:
            if event == "executing":
                if data.get("node") is None:
                    done_message.append(data)
                    return
                self._node = data["node"]
            elif event == "execution_start" and item.prompt_id in self._cancel:
                self.runtime.executor.interrupt.set()
            self.hub.publish(event, data, client_id, broadcast=(event == "execution_interrupted"
                                                                and client_id is None))

        with self._lock:
            self._item, self._node = item, None
        try:
            result = self.runtime.executor.execute(item.prompt, item.prompt_id, item.outputs_to_execute,
                                                   on_event=on_event, extra_data=item.full_extra_data())
            status = _STATUS.get(result.status, ERROR)
            if status == INTERRUPTED and self._stop.is_set() and item.prompt_id not in self._cancel:
                self.queue.requeue(item.prompt_id)  # stopped by a shutdown, not by a user: run it next time
                return
            self.queue.task_done(item.prompt_id, status, result.outputs, result.messages, result.meta,
                                 error=_error_summary(result.error) if result.error else None)
        except Exception as exc:  # an engine bug: record it and keep serving
            log.exception("executing prompt %s failed", item.prompt_id)
            data = {"prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
                    "exception_message": str(exc), "exception_type": type(exc).__name__,
                    "traceback": traceback.format_exception(exc), "current_inputs": {}, "current_outputs": [],
                    "timestamp": int(time.time() * 1000)}
            self.hub.publish("execution_error", data, client_id)
            self.queue.task_done(item.prompt_id, ERROR, messages=[["execution_error", data]],
                                 error=_error_summary(data))
        finally:
            with self._lock:
                self._item, self._node = None, None
                self._cancel.discard(item.prompt_id)
        self.hub.publish("executing", done_message[0] if done_message else
                         {"node": None, "display_node": None, "prompt_id": item.prompt_id}, client_id)

    def _free(self, flags: dict[str, Any]) -> None:
        """/free: unload models, and with free_memory also drop every cached output."""
        if flags.get("free_memory"):
            self.runtime.cache.clear()
        if flags.get("unload_models") or flags.get("free_memory"):
            models = getattr(self.runtime, "models", None)
            if models is not None and getattr(models, "loaded", True):  # never create a manager to empty it
                models.offload_all()
            gc.collect()
            torch = sys.modules.get("torch")  # only if something already loaded it
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ----- previews (binary websocket frames)
    def _on_preview(self, prompt_id: str, node_id: str, preview: Any) -> None:
        try:
            image_bytes, image_format = encode_preview(preview, self.preview_size)
        except Exception:
            log.debug("preview could not be encoded", exc_info=True)
            return
        item = self._item
        client_id = item.extra_data.get("client_id") if item else None
        metadata = {"node_id": node_id, "prompt_id": prompt_id, "display_node_id": node_id,
                    "parent_node_id": None, "real_node_id": node_id}
        self.hub.publish_preview(image_bytes, image_format, metadata, client_id)


def encode_preview(preview: Any, max_size: int) -> tuple[bytes, str]:
    """A preview (PIL image, (format, PIL image) pair, or encoded bytes) -> (JPEG/PNG bytes, format)."""
    if isinstance(preview, (bytes, bytearray)):
        return bytes(preview), "JPEG"
    if isinstance(preview, tuple) and len(preview) >= 2:
        preview = preview[1]
    if hasattr(preview, "detach"):  # an IMAGE tensor: take the first image of the batch
        from engine.images import tensor_to_pil  # noqa: PLC0415 - torch is loaded already here

        tensor = preview[0] if preview.ndim == 4 else preview
        preview = tensor_to_pil(tensor)
    picture = preview.convert("RGB")
    picture.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), "JPEG"


def _error_summary(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": data.get("exception_type") or "execution_error",
            "message": data.get("exception_message") or "execution failed",
            "details": f"node {data.get('node_id')} ({data.get('node_type')})",
            "extra_info": {"node_id": data.get("node_id"), "node_type": data.get("node_type")}}
