"""The default backend: prompts run on the server's own executor, one at a time, in the dispatcher's thread.

Each submitted prompt gets its own interrupt token, so an interrupt that arrives before the prompt starts
stops it at its first node (the contract: engine.backends.contract).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from engine.backends.contract import RunSink
from engine.backends.worker_common import encode_preview, free_runtime, run_preview_method
from engine.core.context import InterruptFlag

log = logging.getLogger(__name__)


class InProcessRun:
    def __init__(self, backend: "InProcessBackend", item: Any, sink: RunSink, interrupt: InterruptFlag) -> None:
        self.backend = backend
        self.item = item
        self.sink = sink
        self.interrupt = interrupt

    def wait(self) -> Any:
        return self.backend.execute(self)


class InProcessBackend:
    """The server's own executor: one prompt at a time, run in the calling (dispatcher) thread."""

    name = "inprocess"
    concurrent = False

    def __init__(self, runtime: Any, preview_size: int = 512, preview_method: str = "auto") -> None:
        self.runtime = runtime
        self.preview_size = preview_size
        self.preview_method = preview_method
        self._lock = threading.Lock()
        self._submitted: dict[str, InterruptFlag] = {}  # prompt id -> its token, until it ends
        self._running: str | None = None

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def wait_for_capacity(self, timeout: float) -> bool:
        return True  # the dispatcher runs each prompt to its end before taking the next

    choose = None  # queue order

    def submit(self, item: Any, sink: RunSink) -> InProcessRun:
        interrupt = InterruptFlag()
        with self._lock:
            self._submitted[item.prompt_id] = interrupt
        return InProcessRun(self, item, sink, interrupt)

    def execute(self, run: InProcessRun) -> Any:
        item, sink = run.item, run.sink
        method = run_preview_method(item.extra_data, self.preview_method)

        def on_preview(prompt_id: str, node_id: str, preview: Any) -> None:
            try:
                image_bytes, image_format = encode_preview(preview, self.preview_size, method,
                                                           self.runtime.folders)
            except Exception:  # noqa: BLE001 - a preview that cannot be rendered is skipped, not the prompt
                log.debug("preview could not be encoded", exc_info=True)
                return
            sink.preview(image_bytes, image_format, node_id)

        with self._lock:
            self._running = item.prompt_id
        try:
            return self.runtime.executor.execute(item.prompt, item.prompt_id, item.outputs_to_execute,
                                                 on_event=sink.event, extra_data=item.full_extra_data(),
                                                 interrupt=run.interrupt,
                                                 on_preview=None if method == "none" else on_preview)
        finally:
            with self._lock:
                self._running = None
                self._submitted.pop(item.prompt_id, None)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        with self._lock:
            if prompt_id is None:
                targets = list(self._submitted.values())
            elif prompt_id in self._submitted:
                targets = [self._submitted[prompt_id]]
            else:
                return False
            for token in targets:
                token.set()
            return self._running is not None

    def free(self, unload_models: bool, free_memory: bool) -> None:
        free_runtime(self.runtime, unload_models, free_memory)

    def placement(self, prompt_id: str) -> dict[str, Any] | None:
        return None

    def placements(self) -> dict[str, dict[str, Any]]:
        return {}

    def workers_info(self) -> list[dict[str, Any]] | None:
        return None  # /system_stats lists the server's own devices
