"""One process per queue database: two servers on one database would both resume the same running prompt.

The owner holds an exclusive `flock` on a `<database>.lock` file beside the database for as long as its queue
is open; the operating system releases it when the process dies, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class QueueLockedError(RuntimeError):
    """Another process already owns this queue database."""


class OwnerLock:
    """The held lock; `close()` releases it."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle: IO[str] | None = handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the flock
            self._handle = None


def acquire_owner_lock(db_path: Path) -> OwnerLock:
    """Lock `db_path` for this process, or raise `QueueLockedError` when another process holds it."""
    # The file stays open for the queue's lifetime (the lock lives as long as it): no `with` here.
    handle = open(db_path.with_name(db_path.name + ".lock"), "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise QueueLockedError(f"the queue database {db_path} is in use by another fluxgraph process") from None
    return OwnerLock(handle)
