"""The Ray executor backend: prompts run on a pool of Ray actors, one per device (`fluxgraph serve --executor ray`).

The server keeps the SQLite queue and history as the one source of truth; this backend only places each
prompt on a worker (engine.backends.ray.scheduler) and relays what the worker streams back (events in order,
previews, output files) into the server's sink and output folder.

Workers are actors with `max_restarts=0`: when one dies, the caller hears it within milliseconds (with
restarts on, only after the restart and its model loading), so the prompt can go to another worker at once,
while a replacement actor is started in the background, wherever Ray finds room for it. Ray cannot say
whether a lost call ran; re-running is safe because only the server records a prompt's result, once.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import ray  # noqa: TID253 - this module is the Ray backend: imported only for --executor ray
from ray.exceptions import ActorUnavailableError, RayActorError  # noqa: TID253 - as above

from engine.backends.contract import RunSink, WorkerLost
from engine.backends.ray.actor import PromptActor
from engine.backends.ray.cluster import RayConnection, cluster_gpus, connect
from engine.backends.ray.files import OutputStore, input_files, rename_records
from engine.backends.ray.options import RayOptions
from engine.backends.ray.scheduler import ModelIdentities, Scheduler, WorkerSlot, worker_count

log = logging.getLogger(__name__)
LOST_ERRORS = (RayActorError, ActorUnavailableError)
PLACEMENTS_REMEMBERED = 10_000
INFO_TIMEOUT_S = 2.0


class WorkerCrash(RuntimeError):
    """The engine failed on the worker outside any node (recorded as the prompt's error)."""


class RayBackend:
    name = "ray"
    concurrent = True

    def __init__(self, runtime: Any, options: RayOptions | None = None, preview_size: int = 512,
                 preview_method: str = "auto") -> None:
        self.runtime = runtime
        self.options = options or RayOptions()
        self.preview_size = preview_size
        self.preview_method = preview_method
        self.scheduler = Scheduler()
        self.identities = ModelIdentities(runtime.folders)
        self.store = OutputStore(runtime.folders)
        self.connection: RayConnection | None = None
        self._cond = threading.Condition()
        self._workers: dict[str, WorkerSlot] = {}
        self._numbers = itertools.count(1)
        self._placements: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._actor_class: Any = None
        self._gpus_per_worker = 0
        self._closed = False
        self.start_errors: list[str] = []

    # ----- lifecycle
    def start(self) -> None:
        """Connect (or start a local Ray) now, so a bad address fails here; workers start in the background."""
        if self.connection is not None:
            return
        self.connection = connect(self.options)
        gpus = cluster_gpus(ray)
        self._gpus_per_worker = 1 if gpus else 0
        self._actor_class = ray.remote(PromptActor)
        for _ in range(worker_count(self.options.workers, gpus)):
            self._spawn()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            slots = list(self._workers.values())
            self._workers.clear()
            self._cond.notify_all()
        closing = [slot.handle.close.remote() for slot in slots if slot.state in ("idle", "busy")]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=5.0)
        for slot in slots:
            ray.kill(slot.handle, no_restart=True)
        if self.connection is not None:
            self.connection.close()

    def _worker_spec(self) -> dict[str, Any]:
        folders = self.runtime.folders
        spec: dict[str, Any] = {
            "node_packages": list(self.options.node_packages), "threads": self.options.threads_per_worker,
            "preview_size": self.preview_size,
            "preview_method": self.preview_method, "models_dir": str(folders.models_dir),
            "priority_model_dirs": {k: [str(p) for p in v] for k, v in folders.priority_model_dirs.items()},
            "extra_model_dirs": {k: [str(p) for p in v] for k, v in folders.extra_model_dirs.items()},
            "shared": self.options.shared_storage, "memory": self.options.memory,
        }
        if self.options.shared_storage:
            spec["folders"] = {"base_dir": str(folders.base_dir), "input_dir": str(folders.input_dir),
                               "output_dir": str(folders.output_dir), "temp_dir": str(folders.temp_dir)}
        return spec

    def _spawn(self) -> None:
        name = f"worker-{next(self._numbers)}"
        handle = self._actor_class.options(
            max_restarts=0, max_concurrency=4, num_cpus=self.options.worker_cpus,
            num_gpus=self._gpus_per_worker).remote(name, self._worker_spec())
        slot = WorkerSlot(name=name, handle=handle)
        with self._cond:
            self._workers[name] = slot
        threading.Thread(target=self._await_ready, args=(slot,), name=f"fluxgraph-{name}-start",
                         daemon=True).start()

    def _await_ready(self, slot: WorkerSlot) -> None:
        try:
            info = ray.get(slot.handle.ready.remote(), timeout=self.options.start_timeout_s)
        except Exception as exc:  # noqa: BLE001 - not replaced: a worker that cannot start would fail again
            if self._closed:
                return  # stopped while starting
            message = f"{slot.name} did not start: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log.error("%s", message)
            with self._cond:
                self.start_errors.append(message)
                if self._workers.get(slot.name) is slot:
                    slot.state = "dead"
                    del self._workers[slot.name]
            return
        with self._cond:
            if slot.state == "starting":
                slot.info, slot.state, slot.idle_since = info, "idle", time.monotonic()
                log.info("%s ready on %s (%s)", slot.name, info.get("node"), info["device"]["name"])
            self._cond.notify_all()

    def _lost(self, slot: WorkerSlot) -> None:
        """A worker died: forget it and start a replacement."""
        with self._cond:
            if self._workers.get(slot.name) is not slot:
                return
            slot.state = "dead"
            del self._workers[slot.name]
            replace = not self._closed
        log.warning("%s was lost; starting a replacement", slot.name)
        if replace:
            self._spawn()

    # ----- dispatch
    def wait_for_capacity(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or self._idle(), timeout) and not self._closed

    def _idle(self) -> list[WorkerSlot]:
        return [slot for slot in self._workers.values() if slot.state == "idle"]

    def choose(self, pending: list[Any]) -> Any:
        with self._cond:
            return self.scheduler.choose(pending)

    def submit(self, item: Any, sink: RunSink) -> "RayRun":
        models = self.identities.of_prompt(item.prompt, self.runtime.registry)
        with self._cond:
            slot = self.scheduler.pick_worker(self._idle(), models)
            if slot is None:
                raise WorkerLost("(none idle)", False, "no idle worker")
            slot.state, slot.prompt_id = "busy", item.prompt_id
            self.scheduler.started(item)
            self._placements[item.prompt_id] = {"worker": slot.name, "node": slot.info.get("node"),
                                                "hostname": slot.info.get("hostname")}
            while len(self._placements) > PLACEMENTS_REMEMBERED:
                self._placements.popitem(last=False)
        return RayRun(self, slot, item, sink, models)

    def _release(self, slot: WorkerSlot, item: Any, models: frozenset[str]) -> None:
        with self._cond:
            self.scheduler.finished(item)
            if slot.state == "busy":
                slot.state, slot.prompt_id = "idle", None
                slot.runs += 1
                slot.idle_since = time.monotonic()
                slot.hold(models)
            self._cond.notify_all()

    # ----- control and status
    def interrupt(self, prompt_id: str | None = None) -> bool:
        with self._cond:
            targets = [slot for slot in self._workers.values() if slot.state == "busy"
                       and (prompt_id is None or slot.prompt_id == prompt_id)]
        for slot in targets:
            slot.handle.interrupt.remote(slot.prompt_id)
        return bool(targets)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        with self._cond:
            slots = [slot for slot in self._workers.values() if slot.state in ("idle", "busy")]
            if unload_models or free_memory:
                for slot in slots:
                    slot.models.clear()
        for slot in slots:
            slot.handle.free.remote(unload_models, free_memory)

    def placement(self, prompt_id: str) -> dict[str, Any] | None:
        with self._cond:
            found = self._placements.get(prompt_id)
            return dict(found) if found else None

    def placements(self) -> dict[str, dict[str, Any]]:
        """Where each running prompt runs."""
        with self._cond:
            return {slot.prompt_id: dict(self._placements.get(slot.prompt_id, {"worker": slot.name}))
                    for slot in self._workers.values() if slot.state == "busy" and slot.prompt_id}

    def workers_info(self) -> list[dict[str, Any]]:
        """Every worker with its state, device and memory (asked of the live workers, 2 s at most)."""
        with self._cond:
            slots = list(self._workers.values())
        asked = {slot.name: slot.handle.info.remote() for slot in slots if slot.state in ("idle", "busy")}
        if asked:
            ray.wait(list(asked.values()), num_returns=len(asked), timeout=INFO_TIMEOUT_S)
        listed = []
        for slot in slots:
            info = slot.info
            if slot.name in asked:
                try:
                    info = ray.get(asked[slot.name], timeout=0)
                    slot.info = info
                except LOST_ERRORS:
                    if slot.state == "idle":  # a busy one is handled by the thread that runs its prompt
                        self._lost(slot)
                    continue
                except Exception:  # noqa: BLE001 - slow to answer: show what it said last
                    pass
            listed.append({"name": slot.name, "state": slot.state, "prompt_id": slot.prompt_id,
                           "prompts_run": slot.runs, "models_held": len(slot.models),
                           "node": info.get("node"), "hostname": info.get("hostname"), "pid": info.get("pid"),
                           "device": info.get("device")})
        with self._cond:
            listed += [{"name": error.split(" ", 1)[0], "state": "failed", "error": error}
                       for error in self.start_errors]
        return listed


class RayRun:
    """One prompt on one worker: `wait()` relays its stream into the sink and returns its result."""

    def __init__(self, backend: RayBackend, slot: WorkerSlot, item: Any, sink: RunSink,
                 models: frozenset[str]) -> None:
        self.backend = backend
        self.slot = slot
        self.item = item
        self.sink = sink
        self.models = models
        self.renamed: dict[tuple[str, str, str], str] = {}

    def wait(self) -> Any:
        backend, slot, item = self.backend, self.slot, self.item
        started = False
        try:
            inputs = [] if backend.options.shared_storage else \
                input_files(item.prompt, backend.runtime.registry, backend.runtime.folders)
            stream = slot.handle.run.remote(item.prompt_id, item.prompt, item.outputs_to_execute,
                                            item.full_extra_data(), inputs)
            for ref in stream:
                for message in ray.get(ref):
                    if message[0] == "started":
                        started = True
                    elif message[0] == "result":
                        return self._result(message[1])
                    elif message[0] == "crash":
                        raise WorkerCrash(f"{slot.name}: {message[1]}: {message[2]}")
                    else:
                        self._relay(message)
            raise WorkerLost(slot.name, started, "its stream ended without a result")
        except LOST_ERRORS as exc:
            backend._lost(slot)
            raise WorkerLost(slot.name, started, str(exc).strip().splitlines()[0][:300]) from None
        finally:
            backend._release(slot, item, self.models)

    def _relay(self, message: tuple) -> None:
        kind = message[0]
        if kind == "event":
            event, data = message[1], message[2]
            if event == "executed" and self.renamed:
                data = {**data, "output": rename_records(data.get("output"), self.renamed)}
            self.sink.event(event, data)
        elif kind == "preview":
            self.sink.preview(message[1], message[2], message[3])
        elif kind == "file":
            key = message[1]
            stored = self.backend.store.store(self.slot.name, key, message[2])
            if stored != key[2]:
                self.renamed[key] = stored
        elif kind == "file_ref":
            key = message[1]
            stored = self.backend.store.known(self.slot.name, key)
            if stored is not None and stored != key[2]:
                self.renamed[key] = stored

    def _result(self, result: Any) -> Any:
        if self.renamed:
            result.outputs = {node: rename_records(ui, self.renamed) for node, ui in result.outputs.items()}
        return result
