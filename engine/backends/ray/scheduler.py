"""Which prompt runs next, and on which worker: per-client fairness, then model affinity. No Ray here.

Fairness: among pending prompts, the next one belongs to the client with the fewest prompts running now,
ties going to the client served longest ago; each client's own prompts keep their queue order. A prompt
that was resumed (its worker died) or queued with `front` keeps its place at the head. So a client that
queues a hundred prompts delays another client's single prompt by at most one prompt per worker.

Affinity: a prompt goes to an idle worker that already holds the most of its models (identified by content,
not by name: the same file under two names is one model, and two machines' files with one name are told
apart), otherwise to the least loaded idle worker (fewest models held, then idle the longest, so that
prompts without models take turns).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine.core.folders import DEFAULT_MODEL_FOLDERS, UnsafePathError
from engine.core.prompt_paths import path_values

MODELS_REMEMBERED = 8  # per worker: the memory manager keeps about this many loaded
_SAMPLE = 1 << 20  # bytes read at the start, middle and end of a large model file
_FULL_HASH_LIMIT = 64 << 20


@dataclass
class WorkerSlot:
    """The server's view of one worker."""

    name: str
    handle: Any = None  # the Ray actor handle
    state: str = "starting"  # starting | idle | busy | dead
    prompt_id: str | None = None
    models: OrderedDict = field(default_factory=OrderedDict)  # model identity -> None, most recent last
    runs: int = 0
    idle_since: float = 0.0  # time.monotonic() when it last became idle
    info: dict[str, Any] = field(default_factory=dict)  # device, memory, node (from the worker)

    def hold(self, models: Iterable[str]) -> None:
        for model in models:
            self.models[model] = None
            self.models.move_to_end(model)
        while len(self.models) > MODELS_REMEMBERED:
            self.models.popitem(last=False)


def client_of(item: Any) -> str | None:
    return item.extra_data.get("client_id")


class Scheduler:
    def __init__(self) -> None:
        self._running = Counter()  # client -> prompts running
        self._served = {}  # client -> when its last prompt started (a sequence number)
        self._ticks = itertools.count(1)

    def choose(self, pending: list[Any]) -> Any:
        """The prompt to start next, from pending prompts in queue order."""
        if not pending:
            return None
        head = pending[0]
        if head.resumed or (isinstance(head.number, (int, float)) and head.number < 0):
            return head
        first_of: dict[Any, tuple[int, Any]] = {}
        for position, item in enumerate(pending):
            first_of.setdefault(client_of(item), (position, item))
        client = min(first_of, key=lambda c: (self._running[c], self._served.get(c, 0), first_of[c][0]))
        return first_of[client][1]

    def started(self, item: Any) -> None:
        client = client_of(item)
        self._running[client] += 1
        self._served[client] = next(self._ticks)

    def finished(self, item: Any) -> None:
        client = client_of(item)
        self._running[client] -= 1
        if self._running[client] <= 0:
            del self._running[client]

    @staticmethod
    def pick_worker(idle: list[WorkerSlot], models: frozenset[str]) -> WorkerSlot | None:
        if not idle:
            return None
        return min(idle, key=lambda w: (-len(models.intersection(w.models)), len(w.models), w.idle_since, w.name))


class ModelIdentities:
    """Content identities of the model files a prompt names, cached by (path, size, mtime)."""

    def __init__(self, folders: Any) -> None:
        self.folders = folders
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int, int], str] = {}

    def of_prompt(self, prompt: dict[str, Any], registry: Any) -> frozenset[str]:
        identities = set()
        for path in model_files(prompt, registry, self.folders):
            identity = self.of_path(path)
            if identity:
                identities.add(identity)
        return frozenset(identities)

    def of_path(self, path: Path) -> str | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        if path.is_dir():  # a diffusers / transformers folder: the identities of its files
            parts = sorted(str(p.relative_to(path)) + ":" + (self.of_path(p) or "")
                           for p in path.rglob("*") if p.is_file())
            return hashlib.sha256("\n".join(parts).encode()).hexdigest()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            cached = content_hash(path, stat.st_size)
            with self._lock:
                self._cache[key] = cached
        return cached


def content_hash(path: Path, size: int) -> str:
    """sha256 of a file; above 64 MiB, of its size and three 1 MiB samples (start, middle, end), which is
    what tells model files apart (a safetensors header at the start lists every tensor) without reading
    gigabytes on the dispatch path."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as stream:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        else:
            for offset in (0, size // 2, size - _SAMPLE):
                stream.seek(offset)
                digest.update(stream.read(_SAMPLE))
    return digest.hexdigest()


def model_files(prompt: dict[str, Any], registry: Any, folders: Any) -> list[Path]:
    """Model files and folders the prompt's combo and file-name inputs name, in any model folder."""
    roots = [(key, [str(root) for root in folders.model_dirs(key)]) for key in DEFAULT_MODEL_FOLDERS]
    found: list[Path] = []
    for value in path_values(prompt, registry, "name"):
        if not value:
            continue
        path = _find_model(folders, roots, value)
        if path is not None and path not in found:
            found.append(path)
    return found


def _find_model(folders: Any, roots: list[tuple[str, list[str]]], name: str) -> Path | None:
    for key, directories in roots:
        # A plain existence test first (most combo values, like sampler names, are no file at all); the
        # containment check resolves symlinks and costs far more.
        if not any(os.path.exists(os.path.join(directory, name)) for directory in directories):
            continue
        try:
            return folders.model_path(key, name)
        except (FileNotFoundError, UnsafePathError, OSError):
            continue
    return None


def worker_count(requested: int | None, gpus: int) -> int:
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--workers must be at least 1, got {requested}")
        return requested
    return max(1, gpus)
