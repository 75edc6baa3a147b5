"""The dispatcher: takes prompts from the queue and hands them to the executor backend, never on the event loop.

The server keeps answering /queue, /object_info and the websocket while long jobs run. With the default
in-process backend one prompt runs at a time in this thread; with a backend that has several workers (Ray),
each prompt runs in its own thread while the loop keeps dispatching to free workers. Events are handed to
the hub (which crosses into the loop with `call_soon_threadsafe`). The closing `executing {node: null}` is
held back until the queue has recorded the result, so clients see execution_success -> status ->
executing(null), in ComfyUI's order, and a client reacting to "done" finds the prompt in /history.

A worker that dies under a prompt (`WorkerLost`): the prompt is queued again at the front, marked resumed,
and runs once more elsewhere; if it was already resumed, or the user interrupted it, it is recorded instead
of being retried, so it never runs to completion twice.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from typing import Any

from engine.backends.contract import Backend, WorkerLost
from engine.backends.in_process import InProcessBackend
from engine.queue.store import ERROR, INTERRUPTED, SUCCESS, PromptQueue, QueueItem
from engine.server.events import EventHub

log = logging.getLogger(__name__)
_STATUS = {"success": SUCCESS, "error": ERROR, "interrupted": INTERRUPTED}


class _Sink:
    """Routes one prompt's events to its client and tracks the node it is on."""

    def __init__(self, worker: "PromptWorker", item: QueueItem) -> None:
        self.worker = worker
        self.item = item
        self.client_id = item.extra_data.get("client_id")
        self.node: str | None = None
        self.done_message: dict[str, Any] | None = None

    def event(self, event: str, data: dict[str, Any]) -> None:
        if event == "executing":
            if data.get("node") is None:
                self.done_message = data  # sent once the result is in the history
                return
            self.node = data["node"]
        self.worker.hub.publish(event, data, self.client_id,
                                broadcast=(event == "execution_interrupted" and self.client_id is None))

    def preview(self, image_bytes: bytes, image_format: str, node_id: str) -> None:
        prompt_id = self.item.prompt_id
        metadata = {"node_id": node_id, "prompt_id": prompt_id, "display_node_id": node_id,
                    "parent_node_id": None, "real_node_id": node_id}
        self.worker.hub.publish_preview(image_bytes, image_format, metadata, self.client_id)


class PromptWorker:
    def __init__(self, runtime: Any, queue: PromptQueue, hub: EventHub, preview_size: int = 512,
                 backend: Backend | None = None) -> None:
        self.runtime = runtime
        self.queue = queue
        self.hub = hub
        self.preview_size = preview_size
        self.backend: Backend = backend if backend is not None else InProcessBackend(runtime, preview_size)
        self._thread: threading.Thread | None = None
        self._run_threads: set[threading.Thread] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._runs: dict[str, _Sink] = {}  # running prompts, in start order
        self._cancel: set[str] = set()  # interrupted by a user (not by a shutdown)
        self._last_gc = time.monotonic()

    # ----- lifecycle
    def start(self) -> None:
        self.backend.start()
        self._thread = threading.Thread(target=self._loop, name="fluxgraph-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.backend.interrupt(None)
        self.queue.set_flag("stop", True)  # wakes a worker waiting for work
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        for thread in list(self._run_threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self.backend.close()

    # ----- what the routes ask
    @property
    def running_prompt_id(self) -> str | None:
        with self._lock:
            return next(iter(self._runs), None)

    def current_node_for(self, client_id: str) -> str | None:
        with self._lock:
            for sink in self._runs.values():
                if sink.client_id == client_id:
                    return sink.node
        return None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only `prompt_id`, when given; every running one otherwise)."""
        with self._lock:
            if prompt_id is not None:
                if prompt_id not in self._runs:
                    return False
                self._cancel.add(prompt_id)
            else:
                self._cancel.update(self._runs)
            running = bool(self._runs)
        self.backend.interrupt(prompt_id)
        return running

    # ----- the dispatch thread
    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.backend.wait_for_capacity(timeout=1.0):
                self._apply_flags()
                continue
            try:
                item = self.queue.get(timeout=1.0, choose=self.backend.choose)
            except Exception:  # a closed queue during shutdown
                log.exception("queue.get failed")
                return
            self._apply_flags()
            if item is None or self._stop.is_set():
                if item is not None:
                    self.queue.requeue(item.prompt_id, resumed=False)
                continue
            sink = _Sink(self, item)
            with self._lock:
                self._runs[item.prompt_id] = sink
            try:
                run = self.backend.submit(item, sink)
            except Exception as exc:  # noqa: BLE001 - recorded as the prompt's error by _finish
                self._finish(item, sink, None, exc)
                continue
            if self.backend.concurrent:
                thread = threading.Thread(target=self._finish, args=(item, sink, run), daemon=True,
                                          name=f"fluxgraph-run-{item.prompt_id[:8]}")
                self._run_threads.add(thread)
                thread.start()
            else:
                self._finish(item, sink, run)
            if time.monotonic() - self._last_gc > 10.0:  # collect between prompts, not after every one
                gc.collect()
                self._last_gc = time.monotonic()

    def _apply_flags(self) -> None:
        flags = self.queue.take_flags()
        flags.pop("stop", None)
        if flags:
            self.backend.free(bool(flags.get("unload_models")), bool(flags.get("free_memory")))

    def _finish(self, item: QueueItem, sink: _Sink, run: Any, failure: Exception | None = None) -> None:
        """Wait for the run, record how it ended, then send the held-back `executing null`."""
        try:
            if failure is not None:
                raise failure
            result = run.wait()
            status = _STATUS.get(result.status, ERROR)
            if status == INTERRUPTED and self._stop.is_set() and item.prompt_id not in self._cancel:
                self.queue.requeue(item.prompt_id)  # stopped by a shutdown, not by a user: run it next time
                return
            self.queue.task_done(item.prompt_id, status, result.outputs, result.messages, result.meta,
                                 error=_error_summary(result.error) if result.error else None)
        except WorkerLost as lost:
            if not self._worker_lost(item, sink, lost):
                return  # queued again: the client hears the rerun, not an ending
        except Exception as exc:  # an engine bug: record it and keep serving
            log.exception("executing prompt %s failed", item.prompt_id)
            self._record_failure(item, sink, type(exc).__name__, str(exc), traceback.format_exception(exc))
        finally:
            with self._lock:
                self._runs.pop(item.prompt_id, None)
                self._cancel.discard(item.prompt_id)
            self._run_threads.discard(threading.current_thread())
        self.hub.publish("executing", sink.done_message or
                         {"node": None, "display_node": None, "prompt_id": item.prompt_id}, sink.client_id)

    def _worker_lost(self, item: QueueItem, sink: _Sink, lost: WorkerLost) -> bool:
        """Queue the prompt again (returns False) or record why it is not retried (returns True)."""
        log.warning("%s (prompt %s)", lost, item.prompt_id)
        cancelled = item.prompt_id in self._cancel
        if cancelled:
            self._record_failure(item, sink, "worker_lost", str(lost), [], status=INTERRUPTED)
        elif not lost.started:
            self.queue.requeue(item.prompt_id, resumed=False)
            return False
        elif self._stop.is_set():
            self.queue.requeue(item.prompt_id)  # the server is stopping: run it after the restart
            return False
        elif item.resumed:
            self._record_failure(item, sink, "worker_lost_twice",
                                 f"{lost}; it was already run again once after losing a worker, and is not "
                                 f"retried a second time", [])
        else:
            self.queue.requeue(item.prompt_id)
            return False
        return True

    def _record_failure(self, item: QueueItem, sink: _Sink, error_type: str, message: str, trace: list[str],
                        status: str = ERROR) -> None:
        event = "execution_interrupted" if status == INTERRUPTED else "execution_error"
        data = {"prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_message": message, "exception_type": error_type, "traceback": trace,
                "current_inputs": {}, "current_outputs": [], "timestamp": int(time.time() * 1000)}
        sink.event(event, data)
        self.queue.task_done(item.prompt_id, status, messages=[[event, data]], error=_error_summary(data))


def _error_summary(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": data.get("exception_type") or "execution_error",
            "message": data.get("exception_message") or "execution failed",
            "details": f"node {data.get('node_id')} ({data.get('node_type')})",
            "extra_info": {"node_id": data.get("node_id"), "node_type": data.get("node_type")}}
