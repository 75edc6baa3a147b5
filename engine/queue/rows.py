"""The prompts table: its schema and statuses, one transaction, and a row as the queue and the API see it.

One table holds every prompt from the moment it is queued; JSON columns are written with the lenient
`engine.core.json_text.dumps` and read back here.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from engine.core.context import RESUMED_KEY

QUEUED, RUNNING, SUCCESS, ERROR, INTERRUPTED = "queued", "running", "success", "error", "interrupted"
FINISHED_STATUSES = (SUCCESS, ERROR, INTERRUPTED)
# Endings no executor message tells about (the queue decided them): history gets one made up from the error.
QUEUE_ENDINGS = ("server_stopped_twice", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- queue order, breaks ties between equal numbers
    prompt_id TEXT NOT NULL UNIQUE,
    number,                                  -- no type affinity: ints stay ints, floats stay floats
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,     -- how many times a worker started it
    resumed INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    done_seq INTEGER,                        -- history order (completion order)
    outputs TEXT,
    messages TEXT,
    meta TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS prompts_status ON prompts(status);
CREATE INDEX IF NOT EXISTS prompts_done ON prompts(done_seq);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value);
"""


@dataclass
class QueueItem:
    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    sensitive: dict[str, Any] = field(default_factory=dict)  # memory only
    resumed: bool = False
    seq: int = 0

    def as_list(self) -> list[Any]:
        """ComfyUI's 5-element queue item, as /queue and /history show it."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]

    def full_extra_data(self) -> dict[str, Any]:
        """extra_data with the sensitive keys put back, for the executor (and whether this is a re-run)."""
        return {**self.extra_data, **self.sensitive, **({RESUMED_KEY: True} if self.resumed else {})}

    def run_order(self) -> tuple[int, Any, int]:
        """Sort key of the run order: resumed prompts first, then ComfyUI's `number`, then queue order."""
        return (0 if self.resumed else 1, self.number, self.seq)


def queued_item(row: sqlite3.Row) -> QueueItem:
    """A pending row back in memory (its sensitive keys were never stored)."""
    return QueueItem(row["number"], row["prompt_id"], json.loads(row["prompt"]), json.loads(row["extra_data"]),
                     json.loads(row["outputs_to_execute"]), resumed=bool(row["resumed"]), seq=row["seq"])


def history_entry(row: sqlite3.Row) -> dict[str, Any]:
    """A finished row as one entry of ComfyUI's /history."""
    status = row["status"]
    messages = json.loads(row["messages"]) if row["messages"] else []
    error = json.loads(row["error"]) if row["error"] else None
    if error and not messages and error.get("type") in QUEUE_ENDINGS:
        messages = [["execution_error" if status == ERROR else "execution_interrupted",
                     {"prompt_id": row["prompt_id"], "exception_message": error["message"],
                      "timestamp": int((row["finished_at"] or 0) * 1000)}]]
    status_block: dict[str, Any] = {
        "status_str": "success" if status == SUCCESS else "error",  # ComfyUI folds interrupted into error
        "completed": status == SUCCESS,
        "messages": messages,
    }
    if row["resumed"]:
        status_block["resumed"] = True
    prompt = [row["number"], row["prompt_id"], json.loads(row["prompt"]), json.loads(row["extra_data"]),
              json.loads(row["outputs_to_execute"])]
    return {"prompt": prompt, "outputs": json.loads(row["outputs"] or "{}"), "status": status_block,
            "meta": json.loads(row["meta"] or "{}")}


def job_entry(row: sqlite3.Row, queue_position: int | None) -> dict[str, Any]:
    """Any row as the typed status API clients poll."""
    started, finished = row["started_at"], row["finished_at"]
    return {
        "prompt_id": row["prompt_id"],
        "status": row["status"],
        "number": row["number"],
        "resumed": bool(row["resumed"]),
        "queue_position": queue_position,
        "outputs": json.loads(row["outputs"]) if row["outputs"] else {},
        "created_at": row["created_at"],
        "started_at": started,
        "finished_at": finished,
        "execution_time": (finished - started) if (started and finished) else None,
        "error": json.loads(row["error"]) if row["error"] else None,
    }


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error) on an autocommit connection.

    Not `durable`: this one commit is not fsynced (synchronous=NORMAL for it alone); the next durable commit
    syncs it along with its own change.
    """

    def __init__(self, db: sqlite3.Connection, durable: bool = True) -> None:
        self._db = db
        self._durable = durable

    def __enter__(self) -> None:
        if not self._durable:
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            if not self._durable:
                self._db.execute("PRAGMA synchronous=FULL")
