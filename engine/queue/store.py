"""The prompt queue and its history, persisted in SQLite so that nothing is lost on a crash.

One table holds every prompt from the moment it is queued: its status moves queued -> running -> success |
error | interrupted, and finished rows form the history (oldest dropped beyond `max_history`). Commits are
durable (WAL, `synchronous=FULL`), so after a restart, even after `kill -9` in the middle of a run:
- history is intact and pending prompts are still queued, in the same order;
- the prompt that was running is queued again, first, and marked `resumed`; a prompt that was already
  resumed once and stopped the server again is recorded as an error instead of being retried forever.

Queueing and finishing a prompt are fsynced before anyone is told; only the "now running" mark is not (a
power loss then leaves the prompt queued, to run from the start).

Order is ComfyUI's min-heap on `number` (a front prompt gets a negative number); ties run in queue order.
Sensitive `extra_data` keys (service tokens) are kept in memory only, never written to disk or history.

The worker thread and the event loop share one instance: every method takes one lock, and `get` blocks on
a condition. Listeners registered with `add_listener` are told (outside the lock) whenever the queue changes.
The table and how its rows read back are in `engine.queue.rows`; the one-process lock in `engine.queue.owner_lock`.
"""

from __future__ import annotations

import heapq
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.core.json_text import dumps
from engine.queue.owner_lock import QueueLockedError, acquire_owner_lock
from engine.queue.rows import (ERROR, FINISHED_STATUSES, INTERRUPTED, QUEUED, RUNNING, SCHEMA, SUCCESS, QueueItem,
                               Transaction, history_entry, job_entry, queued_item)

__all__ = ["DEFAULT_MAX_HISTORY", "ERROR", "FINISHED_STATUSES", "INTERRUPTED", "QUEUED", "RUNNING", "SUCCESS",
           "PromptQueue", "QueueItem", "QueueLockedError", "split_sensitive"]

SENSITIVE_EXTRA_KEYS = frozenset({"auth_token_comfy_org", "api_key_comfy_org"})
DEFAULT_MAX_HISTORY = 10_000


def split_sensitive(extra_data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    public = {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_KEYS}
    secret = {k: v for k, v in extra_data.items() if k in SENSITIVE_EXTRA_KEYS}
    return public, secret


class PromptQueue:
    def __init__(self, db_path: str | os.PathLike[str], max_history: int = DEFAULT_MAX_HISTORY) -> None:
        if max_history < 1:
            raise ValueError(f"max_history must be at least 1, got {max_history}")
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.max_history = max_history
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._listeners: list[Callable[[], None]] = []
        self._flags: dict[str, Any] = {}
        self._closed = False
        self._owner_lock = acquire_owner_lock(self.db_path)
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a crash
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._pending: dict[str, QueueItem] = {}
        self._heap: list[tuple[tuple[int, Any, int], str]] = []
        self._running: dict[str, QueueItem] = {}
        self.recovered: list[str] = []  # prompt ids found running at start and queued again
        self._recover()

    # ------------------------------------------------------------------ startup
    def _recover(self) -> None:
        """Queue again the prompt a crash interrupted (once), then load everything pending."""
        now = time.time()
        with self._transaction():
            for row in self._db.execute("SELECT * FROM prompts WHERE status=?", (RUNNING,)).fetchall():
                if row["resumed"]:
                    self._finish_row(row["prompt_id"], ERROR, now, error={
                        "type": "server_stopped_twice",
                        "message": "The server stopped twice while running this prompt; it is not run again.",
                        "details": "", "extra_info": {}})
                else:
                    self._db.execute("UPDATE prompts SET status=?, resumed=1 WHERE prompt_id=?",
                                     (QUEUED, row["prompt_id"]))
                    self.recovered.append(row["prompt_id"])
        rows = self._db.execute("SELECT * FROM prompts WHERE status=? ORDER BY seq", (QUEUED,)).fetchall()
        for row in rows:
            self._push(queued_item(row))

    def _next_number(self) -> int:
        row = self._db.execute("SELECT value FROM settings WHERE key='counter'").fetchone()
        number = int(row[0]) if row else 0
        self._db.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('counter', ?)", (number + 1,))
        return number

    # ------------------------------------------------------------------ plumbing
    def _transaction(self, durable: bool = True) -> Transaction:
        return Transaction(self._db, durable)

    def _push(self, item: QueueItem) -> None:
        self._pending[item.prompt_id] = item
        heapq.heappush(self._heap, (item.run_order(), item.prompt_id))

    def add_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` runs after every change of the pending/running set (from the changing thread)."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback()

    # ------------------------------------------------------------------ producing
    def put(self, prompt_id: str, prompt: dict[str, Any], extra_data: dict[str, Any],
            outputs_to_execute: Iterable[str], number: int | float | None = None, front: bool = False) -> QueueItem:
        """Queue a validated prompt. Without `number` the server counter is used (negated when `front`)."""
        public, secret = split_sensitive(extra_data)
        outputs = list(outputs_to_execute)
        with self._lock:
            if self._closed:
                raise RuntimeError("the queue is closed")
            with self._transaction():
                if self._db.execute("SELECT 1 FROM prompts WHERE prompt_id=?", (prompt_id,)).fetchone():
                    raise ValueError(f"prompt_id {prompt_id!r} is already used")
                if number is None:
                    number = self._next_number()
                    if front:
                        number = -number
                cur = self._db.execute(
                    "INSERT INTO prompts(prompt_id, number, prompt, extra_data, outputs_to_execute, status, "
                    "created_at) VALUES (?,?,?,?,?,?,?)",
                    (prompt_id, number, dumps(prompt), dumps(public), dumps(outputs), QUEUED, time.time()))
            item = QueueItem(number, prompt_id, prompt, public, outputs, secret, seq=cur.lastrowid)
            self._push(item)
            self._cond.notify_all()
        self._changed()
        return item

    def has_prompt_id(self, prompt_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM prompts WHERE prompt_id=?", (prompt_id,)).fetchone() is not None

    # ------------------------------------------------------------------ consuming (worker thread)
    def get(self, timeout: float | None = None,
            choose: Callable[[list[QueueItem]], QueueItem | None] | None = None) -> QueueItem | None:
        """Take the next prompt (smallest number) and mark it running; None on timeout, close or a flag.

        `choose(pending in run order)` may pick another pending prompt instead (per-client fairness when
        several workers serve one queue); it runs under the queue's lock, so it must be quick.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                item = self._pop_pending() if choose is None else self._pop_chosen(choose)
                if item is not None:
                    break
                if self._flags:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            else:
                return None
            # Not fsynced: kill -9 cannot lose it (it is in the OS cache), and if a power loss does, the prompt
            # is simply still queued. The next FULL commit syncs it along with its own change.
            with self._transaction(durable=False):
                self._db.execute("UPDATE prompts SET status=?, attempts=attempts+1, started_at=? WHERE prompt_id=?",
                                 (RUNNING, time.time(), item.prompt_id))
            self._running[item.prompt_id] = item
        self._changed()
        return item

    def _pop_pending(self) -> QueueItem | None:
        while self._heap:
            _, prompt_id = heapq.heappop(self._heap)
            item = self._pending.pop(prompt_id, None)
            if item is not None:  # deleted items stay in the heap until popped
                return item
        return None

    def _pop_chosen(self, choose: Callable[[list[QueueItem]], QueueItem | None]) -> QueueItem | None:
        if not self._pending:
            return None
        chosen = choose(sorted(self._pending.values(), key=QueueItem.run_order))
        # Its heap entry stays behind and is skipped when popped, like a deleted item's.
        return self._pending.pop(chosen.prompt_id, None) if chosen is not None else None

    def task_done(self, prompt_id: str, status: str, outputs: dict[str, Any] | None = None,
                  messages: list[Any] | None = None, meta: dict[str, Any] | None = None,
                  error: dict[str, Any] | None = None) -> None:
        """Record how a running prompt ended; it moves into the history."""
        if status not in FINISHED_STATUSES:
            raise ValueError(f"status must be one of {FINISHED_STATUSES}, got {status!r}")
        with self._lock:
            self._running.pop(prompt_id, None)
            with self._transaction():
                self._finish_row(prompt_id, status, time.time(), outputs, messages, meta, error)
                self._trim_history()
        self._changed()

    def _finish_row(self, prompt_id: str, status: str, now: float, outputs: Any = None, messages: Any = None,
                    meta: Any = None, error: Any = None) -> None:
        done_seq = self._db.execute("SELECT COALESCE(MAX(done_seq), 0) + 1 FROM prompts").fetchone()[0]
        self._db.execute(
            "UPDATE prompts SET status=?, finished_at=?, done_seq=?, outputs=?, messages=?, meta=?, error=? "
            "WHERE prompt_id=?",
            (status, now, done_seq, dumps(outputs or {}), dumps(messages or []), dumps(meta or {}),
             dumps(error) if error else None, prompt_id))

    def _trim_history(self) -> None:
        self._db.execute(
            "DELETE FROM prompts WHERE done_seq IS NOT NULL AND done_seq <= ("
            " SELECT done_seq FROM prompts WHERE done_seq IS NOT NULL ORDER BY done_seq DESC LIMIT 1 OFFSET ?)",
            (self.max_history,))

    # ------------------------------------------------------------------ queue views and edits
    def queue_remaining(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._running)

    def running(self) -> list[QueueItem]:
        with self._lock:
            return list(self._running.values())

    def pending(self) -> list[QueueItem]:
        """Pending items in run order."""
        with self._lock:
            return sorted(self._pending.values(), key=QueueItem.run_order)

    def delete_queued(self, prompt_ids: Iterable[str]) -> list[str]:
        """Drop pending prompts (a running one is left alone: interrupt it instead). Returns those removed."""
        removed: list[str] = []
        with self._lock:
            with self._transaction():
                for prompt_id in prompt_ids:
                    if self._pending.pop(prompt_id, None) is not None:
                        self._db.execute("DELETE FROM prompts WHERE prompt_id=?", (prompt_id,))
                        removed.append(prompt_id)
        if removed:
            self._changed()
        return removed

    def wipe_queue(self) -> None:
        with self._lock:
            with self._transaction():
                self._db.execute("DELETE FROM prompts WHERE status=?", (QUEUED,))
            self._pending.clear()
            self._heap.clear()
        self._changed()

    def requeue(self, prompt_id: str, resumed: bool = True) -> None:
        """Put a running prompt back at the front, marked resumed (graceful shutdown in the middle of it, a
        lost worker). With `resumed=False` it goes back as it was (it never started)."""
        with self._lock:
            item = self._running.pop(prompt_id, None)
            with self._transaction():
                self._db.execute("UPDATE prompts SET status=?, resumed=MAX(resumed, ?) WHERE prompt_id=? AND "
                                 "status=?", (QUEUED, int(resumed), prompt_id, RUNNING))
            if item is not None:
                item.resumed = item.resumed or resumed
                self._push(item)
                self._cond.notify_all()
        self._changed()

    def cancel_pending(self, prompt_id: str) -> bool:
        """Cancel a pending prompt by id: it leaves the queue and is recorded as interrupted (not deleted)."""
        with self._lock:
            if self._pending.pop(prompt_id, None) is None:
                return False
            with self._transaction():
                self._finish_row(prompt_id, INTERRUPTED, time.time(), error={
                    "type": "cancelled", "message": "Cancelled before it started", "details": "",
                    "extra_info": {}})
                self._trim_history()
        self._changed()
        return True

    # ------------------------------------------------------------------ flags for the worker (/free)
    def set_flag(self, name: str, value: Any) -> None:
        with self._lock:
            self._flags[name] = value
            self._cond.notify_all()

    def take_flags(self) -> dict[str, Any]:
        with self._lock:
            flags, self._flags = self._flags, {}
            return flags

    # ------------------------------------------------------------------ history and jobs
    def history(self, max_items: int | None = None, offset: int = -1,
                prompt_id: str | None = None) -> dict[str, Any]:
        """ComfyUI's /history: {prompt_id: entry}, oldest first; max_items alone gives the newest ones."""
        where = "done_seq IS NOT NULL"
        params: list[Any] = []
        if prompt_id is not None:
            where += " AND prompt_id=?"
            params.append(prompt_id)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM prompts WHERE {where}", params).fetchone()[0]
            if offset is None or offset < 0:
                offset = max(0, total - max_items) if max_items is not None else 0
            limit = -1 if max_items is None else max(0, max_items)
            rows = self._db.execute(f"SELECT * FROM prompts WHERE {where} ORDER BY done_seq LIMIT ? OFFSET ?",
                                    (*params, limit, offset)).fetchall()
        return {row["prompt_id"]: history_entry(row) for row in rows}

    def delete_history(self, prompt_ids: Iterable[str]) -> None:
        with self._lock, self._transaction():
            for prompt_id in prompt_ids:
                self._db.execute("DELETE FROM prompts WHERE prompt_id=? AND done_seq IS NOT NULL", (prompt_id,))

    def clear_history(self) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM prompts WHERE done_seq IS NOT NULL")

    def job(self, prompt_id: str) -> dict[str, Any] | None:
        """A typed status for API clients, or None for an unknown id."""
        with self._lock:
            row = self._db.execute("SELECT * FROM prompts WHERE prompt_id=?", (prompt_id,)).fetchone()
            if row is None:
                return None
            position = None
            if row["status"] == QUEUED:
                order = [item.prompt_id for item in sorted(self._pending.values(), key=QueueItem.run_order)]
                position = order.index(prompt_id) if prompt_id in order else None
        return job_entry(row, position)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            self._db.close()
        self._owner_lock.close()

    def __enter__(self) -> "PromptQueue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
