"""The server's recent log lines in memory, for /internal/logs (ComfyUI's log panel in the frontend).

`install()` adds one `RingHandler` to the root logger (once per process, however many apps are built); it
keeps the last `MAX_ENTRIES` formatted records as ComfyUI's `{"t": <ISO time>, "m": <line>}` entries.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
from typing import Any

MAX_ENTRIES = 1000


class RingHandler(logging.Handler):
    def __init__(self, capacity: int = MAX_ENTRIES) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a bad log call must never break the code that logged
            line = str(record.msg)
        stamp = datetime.datetime.fromtimestamp(record.created).isoformat()
        with self._guard:
            self._entries.append({"t": stamp, "m": line + "\n"})

    def entries(self) -> list[dict[str, Any]]:
        with self._guard:
            return list(self._entries)


LOG_RING = RingHandler()


def install() -> None:
    root = logging.getLogger()
    if LOG_RING not in root.handlers:
        root.addHandler(LOG_RING)
