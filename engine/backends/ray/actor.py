"""One worker: a Ray actor that owns one device, its own node registry, memory manager and output cache.

This module imports no Ray: `engine.backends.ray.backend` wraps `PromptActor` with `ray.remote`. The actor
is threaded (a few concurrent calls), so `interrupt`, `info` and `free` are answered while `run` streams.

`run` is a generator (Ray streams each yielded value to the server as it comes, in order). The executor runs
in a thread of its own and hands its events over a channel; the generator yields them in batches (what
arrived within a couple of milliseconds of the first), because every yield costs a round trip while a
100-node chain emits a hundred events in a burst. Messages, in order:
  ("started", worker) first; ("event", type, data); ("preview", bytes, format, node_id);
  ("file", key, bytes) / ("file_ref", key) before the `executed` event naming that file; and last
  ("result", ExecutionResult) or ("crash", type, message, traceback).

Unless the worker shares the server's folders, its folders are private: inputs arrive with the prompt and
are written through the same containment checks as on the server; each output file is sent back once and
then emptied, keeping its name taken so that the next image gets a new counter and a cached output node
that names it again is recognised (an empty file is sent as a reference to what the server stored).
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

from engine.backends.ray.files import file_records, record_key
from engine.backends.runtime import Runtime
from engine.backends.worker_common import encode_preview, free_runtime, run_preview_method
from engine.core.atomic_files import write_bytes_atomic
from engine.core.context import InterruptFlag
from engine.core.registry import NodeRegistry
from engine.memory.manager import MemoryManager
from engine.memory.system_ram import ram_info

MODELS_DIR_ENV = "FLUXGRAPH_WORKER_MODELS_DIR"  # set on a machine whose models live elsewhere than the server's
BATCH_WINDOW_S = 0.002
ENDINGS = ("result", "crash")
_CANCELS_REMEMBERED = 1000


class PromptActor:
    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.spec = spec
        self.shared = bool(spec.get("shared"))
        self.preview_size = int(spec.get("preview_size", 512))
        self.preview_method = str(spec.get("preview_method", "auto"))
        folders = spec.get("folders") or {}
        self.private_dir = None if self.shared else Path(tempfile.mkdtemp(prefix=f"fluxgraph-{name}-"))
        registry = NodeRegistry()
        for package in spec.get("node_packages", ["nodes"]):
            registry.discover(package)
        self.runtime = Runtime.create(
            base_dir=folders.get("base_dir") or self.private_dir,
            models_dir=os.environ.get(MODELS_DIR_ENV) or spec.get("models_dir"),
            input_dir=folders.get("input_dir"), output_dir=folders.get("output_dir"),
            temp_dir=folders.get("temp_dir"), registry=registry, models=_memory_manager(spec.get("memory")))
        for attribute in ("priority_model_dirs", "extra_model_dirs"):
            for key, paths in (spec.get(attribute) or {}).items():
                getattr(self.runtime.folders, attribute)[key] = [Path(p) for p in paths]
        self.executor = self.runtime.executor
        self._lock = threading.Lock()
        self._current: str | None = None
        self._interrupt: InterruptFlag | None = None  # the running prompt's token
        self._cancel: dict[str, None] = {}  # interrupted prompt ids, oldest first
        self._runs = 0

    # ----- start-up and status
    def ready(self) -> dict[str, Any]:
        """Load torch now (not with the first prompt) and apply the thread count; returns `info()`."""
        import torch  # noqa: PLC0415 - heavy: loaded here, not when the module is imported

        threads = self.spec.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        return self.info()

    def info(self) -> dict[str, Any]:
        with self._lock:
            running = self._current
        failed = getattr(self.runtime.registry, "failed", {})
        return {"name": self.name, "pid": os.getpid(), "hostname": socket.gethostname(), "node": _node_ip(),
                "running": running, "prompts_run": self._runs, "device": device_info(),
                "node_packs_failed": dict(failed)}

    # ----- running a prompt
    def run(self, prompt_id: str, prompt: dict[str, Any], outputs: list[str], extra_data: dict[str, Any],
            inputs: list[tuple[str, bytes]]) -> Iterator[list[tuple]]:
        channel: queue.SimpleQueue = queue.SimpleQueue()
        interrupt = InterruptFlag()
        with self._lock:
            if self._current is not None:
                raise RuntimeError(f"{self.name} is already running prompt {self._current}")
            self._current, self._interrupt = prompt_id, interrupt
            if prompt_id in self._cancel:  # interrupted before it reached this worker
                interrupt.set()
        thread = None
        try:
            self._write_inputs(inputs)
            thread = threading.Thread(target=self._execute, name=f"run-{prompt_id[:8]}", daemon=True,
                                      args=(channel, interrupt, prompt_id, prompt, outputs, extra_data))
            thread.start()
            yield [("started", self.name)]
            while True:
                batch = _next_batch(channel)
                yield batch
                if batch[-1][0] in ENDINGS:
                    return
        finally:
            if thread is not None and thread.is_alive():  # the server stopped listening: stop the work too
                interrupt.set()
                thread.join()
            with self._lock:
                self._current, self._interrupt = None, None
                self._cancel.pop(prompt_id, None)
            self._runs += 1

    def _execute(self, channel: queue.SimpleQueue, interrupt: InterruptFlag, prompt_id: str,
                 prompt: dict[str, Any], outputs: list[str], extra_data: dict[str, Any]) -> None:
        def on_event(event: str, data: dict[str, Any]) -> None:
            if event == "executed" and not self.shared:
                for record in file_records(data.get("output")):
                    channel.put(self._file_message(record))
            channel.put(("event", event, data))

        method = run_preview_method(extra_data, self.preview_method)

        def on_preview(prompt_id: str, node_id: str, preview: Any) -> None:
            try:
                image_bytes, image_format = encode_preview(preview, self.preview_size, method,
                                                           self.runtime.folders)
            except Exception:  # noqa: BLE001 - a preview that cannot be encoded is skipped, not the prompt
                return
            channel.put(("preview", image_bytes, image_format, node_id))

        try:
            result = self.executor.execute(prompt, prompt_id, outputs, on_event=on_event, extra_data=extra_data,
                                           interrupt=interrupt,
                                           on_preview=None if method == "none" else on_preview)
            channel.put(("result", result))
        except BaseException as exc:  # noqa: BLE001 - an engine bug: the server records it as the prompt's error
            channel.put(("crash", type(exc).__name__, str(exc), traceback.format_exception(exc)))

    def _file_message(self, record: dict[str, Any]) -> tuple:
        key = record_key(record)
        try:
            path = self.runtime.folders.resolve_file(key[2], key[0], key[1])
            data = path.read_bytes()
        except (OSError, ValueError):
            return ("file_ref", key)
        if not data:
            return ("file_ref", key)  # sent before; a cached output node names it again
        with open(path, "wb"):  # empty it, keeping the name taken
            pass
        return ("file", key, data)

    def _write_inputs(self, inputs: list[tuple[str, bytes]]) -> None:
        for name, data in inputs:
            path = self.runtime.folders.resolve_file(name, "input")  # the server's containment rules
            if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data)

    # ----- control
    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt `prompt_id` (also if it has not started here yet), or whatever runs when None."""
        with self._lock:
            if prompt_id is not None:
                self._cancel[prompt_id] = None
                while len(self._cancel) > _CANCELS_REMEMBERED:
                    self._cancel.pop(next(iter(self._cancel)))
                if self._current != prompt_id:
                    return False
            elif self._current is None:
                return False
            self._interrupt.set()
            return True

    def free(self, unload_models: bool, free_memory: bool) -> None:
        free_runtime(self.runtime, unload_models, free_memory)

    def close(self) -> None:
        """Remove the private folders (a graceful stop; a killed worker leaves them in the temp folder)."""
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def _memory_manager(settings: Any) -> Any:
    """The worker's own manager and budget, with the server's memory settings (--vram-budget, --lowvram...)."""
    return MemoryManager.from_settings(settings) if settings is not None else MemoryManager()


def _next_batch(channel: queue.SimpleQueue) -> list[tuple]:
    batch = [channel.get()]
    deadline = time.monotonic() + BATCH_WINDOW_S
    while batch[-1][0] not in ENDINGS:
        remaining = deadline - time.monotonic()
        try:
            batch.append(channel.get(timeout=remaining) if remaining > 0 else channel.get_nowait())
        except queue.Empty:
            break
    return batch


def _node_ip() -> str | None:
    ray = sys.modules.get("ray")
    try:
        return ray.util.get_node_ip_address() if ray is not None else None
    except Exception:  # noqa: BLE001 - informational only: no address rather than no worker
        return None


def device_info() -> dict[str, Any]:
    """The worker's device and its memory, in /system_stats' device shape."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        reserved, allocated = torch.cuda.memory_reserved(0), torch.cuda.memory_allocated(0)
        return {"name": f"cuda:0 {torch.cuda.get_device_name(0)}", "type": "cuda", "index": 0,
                "vram_total": total, "vram_free": free, "torch_vram_total": reserved,
                "torch_vram_free": reserved - allocated, "process_rss": _rss()}
    total, available = ram_info()
    total, available = total or 0, available or 0
    return {"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": available,
            "torch_vram_total": total, "torch_vram_free": available, "process_rss": _rss(),
            "threads": torch.get_num_threads() if torch is not None else None}


def _rss() -> int:
    try:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
