"""Files that cross between the server and a worker that does not share its folders.

- Inputs: the files a prompt loads from the server's input/ (uploaded images; or output/ and temp/ with a
  ` [output]` annotation) are read on the server, through the same containment check as /view, and sent
  with the prompt; the worker writes them into its own folders, contained the same way.
- Outputs: an image a worker writes (SaveImage, PreviewImage) comes back as bytes before the `executed`
  event that names it, and is stored in the server's output/ (or temp/) folder, where /view serves it. A
  name already taken on the server gets the next free counter (`name_00007_.png`), and the events and the
  history are rewritten to the name actually stored.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from engine.core.folders import UnsafePathError
from engine.core.prompt_paths import path_values

FILE_TYPES_SHIPPED = ("output", "temp")
_COUNTED_NAME = re.compile(r"^(?P<base>.*)_(?P<counter>\d+)_(?P<ext>\.[^.]+)$")
FileKey = tuple[str, str, str]  # (type, subfolder, filename)


def input_files(prompt: dict[str, Any], registry: Any, folders: Any) -> list[tuple[str, bytes]]:
    """(name as written in the prompt, content) of every existing file the prompt's upload inputs load."""
    found: dict[str, bytes] = {}
    for value in path_values(prompt, registry, "file"):
        if value in found:
            continue
        try:
            path = folders.resolve_file(value, "input")
        except UnsafePathError:
            continue  # refused at queueing time already; the node reports it if it runs
        if path.is_file():
            found[value] = path.read_bytes()
    return list(found.items())


def file_records(ui: Any) -> Iterator[dict[str, Any]]:
    """The `{filename, subfolder, type}` records of output/temp files in a node's ui dict."""
    if not isinstance(ui, dict):
        return
    for values in ui.values():
        for record in values if isinstance(values, list) else []:
            if (isinstance(record, dict) and record.get("type") in FILE_TYPES_SHIPPED
                    and isinstance(record.get("filename"), str)):
                yield record


def record_key(record: dict[str, Any]) -> FileKey:
    return (str(record["type"]), str(record.get("subfolder") or ""), str(record["filename"]))


class OutputStore:
    """Stores the files workers send in the server's folders and remembers what each worker's names became."""

    def __init__(self, folders: Any, remembered: int = 100_000) -> None:
        self.folders = folders
        self._lock = threading.Lock()
        self._names: OrderedDict[tuple[str, FileKey], str] = OrderedDict()  # (worker, its key) -> stored name
        self._remembered = remembered

    def store(self, worker: str, key: FileKey, data: bytes) -> str:
        """Write a worker's file under a free name; returns the file name used on the server."""
        file_type, subfolder, filename = key
        target = self.folders.resolve_file(filename, file_type, subfolder)  # contained, as /view resolves it
        folder, name = target.parent, target.name
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            while True:
                try:
                    descriptor = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    break
                except FileExistsError:
                    name = _next_free_name(folder, name)
            self._names[(worker, key)] = name
            self._names.move_to_end((worker, key))
            while len(self._names) > self._remembered:
                self._names.popitem(last=False)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        return name

    def known(self, worker: str, key: FileKey) -> str | None:
        """The stored name of a file this worker sent earlier (a cached output node names it again)."""
        with self._lock:
            return self._names.get((worker, key))


def _next_free_name(folder: Path, filename: str) -> str:
    """SaveImage's naming: 1 + the highest counter in use for the base name; otherwise `name (N).ext`."""
    match = _COUNTED_NAME.match(filename)
    if match:
        base, width = match["base"], len(match["counter"])
        used = re.compile(re.escape(base) + r"_(\d+)_")
        highest = max((int(found.group(1)) for entry in os.scandir(folder)
                       if (found := used.match(entry.name))), default=0)
        return f"{base}_{highest + 1:0{width}}_{match['ext']}"
    stem, ext = os.path.splitext(filename)
    number = 1
    while (folder / f"{stem} ({number}){ext}").exists():
        number += 1
    return f"{stem} ({number}){ext}"


def rename_records(ui: Any, renamed: dict[FileKey, str]) -> Any:
    """A copy of a ui dict with every record whose file was stored under another name pointing at it."""
    if not renamed or not isinstance(ui, dict):
        return ui
    copy = {}
    for key, values in ui.items():
        if isinstance(values, list):
            values = [{**record, "filename": renamed[record_key(record)]}
                      if isinstance(record, dict) and record.get("type") in FILE_TYPES_SHIPPED
                      and isinstance(record.get("filename"), str) and record_key(record) in renamed else record
                      for record in values]
        copy[key] = values
    return copy
