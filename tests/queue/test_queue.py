"""engine.queue.store: heap order, history bounds, persistence and crash recovery of the SQLite prompt queue."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from engine.core.context import RESUMED_KEY
from engine.queue.store import (ERROR, INTERRUPTED, QUEUED, RUNNING, SUCCESS, PromptQueue, QueueLockedError)
from tests.support.waiting import DEADLINE, blocked_in_wait, wait_until

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "user" / "queue.sqlite3"


def put(queue, prompt_id, **kw):
    return queue.put(prompt_id, PROMPT, {"client_id": "c"}, ["1"], **kw)


def test_min_heap_order_with_front_and_explicit_numbers(db_path):
    with PromptQueue(db_path) as queue:
        assert [put(queue, p).number for p in ("a", "b", "c")] == [0, 1, 2]
        assert put(queue, "front", front=True).number == -3
        assert put(queue, "explicit", number=1.5).number == 1.5
        order = [queue.get(timeout=0).prompt_id for _ in range(5)]
        assert order == ["front", "a", "b", "explicit", "c"]
        assert queue.get(timeout=0) is None


def test_equal_numbers_run_in_queue_order(db_path):
    with PromptQueue(db_path) as queue:
        for prompt_id in ("x", "y", "z"):
            put(queue, prompt_id, number=7)
        assert [queue.get(timeout=0).prompt_id for _ in range(3)] == ["x", "y", "z"]


def test_duplicate_prompt_id_is_refused(db_path):
    with PromptQueue(db_path) as queue:
        put(queue, "a")
        with pytest.raises(ValueError, match="already used"):
            put(queue, "a")


def test_statuses_and_history_entry_shape(db_path):
    with PromptQueue(db_path) as queue:
        put(queue, "a")
        assert queue.job("a")["status"] == QUEUED and queue.job("a")["queue_position"] == 0
        item = queue.get(timeout=0)
        assert item.as_list() == [0, "a", PROMPT, {"client_id": "c"}, ["1"]]
        assert queue.job("a")["status"] == RUNNING
        assert queue.history() == {}  # running prompts are not history yet
        messages = [["execution_start", {"prompt_id": "a", "timestamp": 1}]]
        queue.task_done("a", SUCCESS, outputs={"1": {"images": []}}, messages=messages,
                        meta={"1": {"node_id": "1"}})
        entry = queue.history()["a"]
        assert entry == {"prompt": [0, "a", PROMPT, {"client_id": "c"}, ["1"]],
                         "outputs": {"1": {"images": []}},
                         "status": {"status_str": "success", "completed": True, "messages": messages},
                         "meta": {"1": {"node_id": "1"}}}
        job = queue.job("a")
        assert job["status"] == SUCCESS and job["execution_time"] >= 0 and job["resumed"] is False
        assert queue.job("nope") is None


@pytest.mark.parametrize("status", [ERROR, INTERRUPTED])
def test_failed_runs_show_as_error_in_comfy_history(db_path, status):
    with PromptQueue(db_path) as queue:
        put(queue, "a")
        queue.get(timeout=0)
        queue.task_done("a", status, error={"type": "x", "message": "boom", "details": "", "extra_info": {}})
        assert queue.history()["a"]["status"]["status_str"] == "error"
        assert queue.history()["a"]["status"]["completed"] is False
        assert queue.job("a")["status"] == status and queue.job("a")["error"]["message"] == "boom"
        with pytest.raises(ValueError, match="status must be one of"):
            queue.task_done("a", "weird")


def test_history_is_bounded_and_paged_like_comfy(db_path):
    with PromptQueue(db_path, max_history=3) as queue:
        for index in range(5):
            put(queue, f"p{index}")
            queue.get(timeout=0)
            queue.task_done(f"p{index}", SUCCESS)
        assert list(queue.history()) == ["p2", "p3", "p4"]
        assert list(queue.history(max_items=2)) == ["p3", "p4"]  # max_items alone: the newest
        assert list(queue.history(max_items=1, offset=0)) == ["p2"]
        assert list(queue.history(prompt_id="p3")) == ["p3"]
        queue.delete_history(["p3"])
        assert list(queue.history()) == ["p2", "p4"]
        queue.clear_history()
        assert queue.history() == {}


def test_delete_clear_and_cancel(db_path):
    with PromptQueue(db_path) as queue:
        for prompt_id in "abcd":
            put(queue, prompt_id)
        running = queue.get(timeout=0)
        assert queue.delete_queued(["b", running.prompt_id, "zz"]) == ["b"]  # the running one stays
        assert queue.cancel_pending("c") is True and queue.cancel_pending("c") is False
        assert queue.job("c")["status"] == INTERRUPTED and "c" in queue.history()
        assert [i.prompt_id for i in queue.pending()] == ["d"]
        queue.wipe_queue()
        assert queue.pending() == [] and queue.queue_remaining() == 1
        assert queue.job("b") is None  # deleted (ComfyUI semantics), not recorded


def test_sensitive_extra_data_is_never_written(db_path):
    with PromptQueue(db_path) as queue:
        queue.put("a", PROMPT, {"client_id": "c", "api_key_comfy_org": "SECRET"}, ["1"])
        item = queue.get(timeout=0)
        assert item.extra_data == {"client_id": "c"}
        assert item.full_extra_data()["api_key_comfy_org"] == "SECRET"
        queue.task_done("a", SUCCESS)
    raw = db_path.read_bytes() + db_path.with_name(db_path.name + "-wal").read_bytes() \
        if db_path.with_name(db_path.name + "-wal").exists() else db_path.read_bytes()
    assert b"SECRET" not in raw


def test_restart_keeps_history_pending_and_resumes_the_running_prompt_once(db_path):
    queue = PromptQueue(db_path)
    put(queue, "done")
    queue.get(timeout=0)
    queue.task_done("done", SUCCESS)
    put(queue, "was_running")
    put(queue, "pending1")
    put(queue, "pending2", front=True)
    assert queue.get(timeout=0).prompt_id == "pending2"
    queue.task_done("pending2", SUCCESS)
    assert queue.get(timeout=0).prompt_id == "was_running"
    # Simulate a crash: drop the objects without task_done (the SQLite file is all that survives).
    queue._db.close()
    queue._owner_lock.close()

    queue = PromptQueue(db_path)
    assert queue.recovered == ["was_running"]
    assert list(queue.history()) == ["done", "pending2"]
    assert [i.prompt_id for i in queue.pending()] == ["was_running", "pending1"]
    assert queue.job("was_running")["resumed"] is True
    assert put(queue, "new").number == 4  # the counter survives restarts
    item = queue.get(timeout=0)
    assert item.prompt_id == "was_running" and item.resumed
    assert item.full_extra_data()[RESUMED_KEY] is True  # nodes see it (NodeContext.resumed): training continues
    assert RESUMED_KEY not in queue.pending()[0].full_extra_data()  # pending1 runs for the first time
    # Crash again while the resumed prompt runs: it is not retried a second time.
    queue._db.close()
    queue._owner_lock.close()

    queue = PromptQueue(db_path)
    assert queue.recovered == []
    entry = queue.history()["was_running"]
    assert entry["status"]["status_str"] == "error" and entry["status"]["resumed"] is True
    assert "stopped twice" in entry["status"]["messages"][0][1]["exception_message"]
    assert [i.prompt_id for i in queue.pending()] == ["pending1", "new"]
    queue.close()


def test_requeue_puts_a_running_prompt_back_first(db_path):
    with PromptQueue(db_path) as queue:
        put(queue, "a")
        put(queue, "b")
        assert queue.get(timeout=0).prompt_id == "a"
        queue.requeue("a")
        assert queue.job("a")["status"] == QUEUED and queue.job("a")["resumed"] is True
        assert [i.prompt_id for i in queue.pending()] == ["a", "b"]
    with PromptQueue(db_path) as queue:  # and it stays so across a restart
        assert queue.recovered == [] and [i.prompt_id for i in queue.pending()] == ["a", "b"]


def test_database_uses_wal_and_full_sync(db_path):
    with PromptQueue(db_path) as queue:
        assert queue._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert queue._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        put(queue, "a")
        # Another connection sees the committed row at once: every put is committed.
        other = sqlite3.connect(db_path)
        assert other.execute("SELECT status FROM prompts WHERE prompt_id='a'").fetchone() == (QUEUED,)
        other.close()
        queue.get(timeout=0)  # the "running" mark is committed without fsync...
        assert queue._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # ...and FULL is restored after it


def test_second_process_cannot_open_the_same_queue(db_path):
    with PromptQueue(db_path):
        with pytest.raises(QueueLockedError, match="in use"):
            PromptQueue(db_path)


def test_get_blocks_until_put_from_another_thread_and_listeners_fire(db_path):
    changes = []
    with PromptQueue(db_path) as queue:
        queue.add_listener(lambda: changes.append(queue.queue_remaining()))
        got = []
        consumer = threading.Thread(target=lambda: got.append(queue.get()))
        consumer.start()
        wait_until(lambda: blocked_in_wait(consumer), what="the consumer to wait for a prompt")
        put(queue, "a")
        consumer.join(DEADLINE)
        assert got[0].prompt_id == "a"
        assert changes == [1, 1]  # put, then get (still 1: now running)


def test_flags_wake_an_idle_worker(db_path):
    with PromptQueue(db_path) as queue:
        result = []
        waiter = threading.Thread(target=lambda: result.append(queue.get()))  # no timeout: only a flag ends it
        waiter.start()
        wait_until(lambda: blocked_in_wait(waiter), what="the worker to wait for a prompt")
        queue.set_flag("free_memory", True)
        waiter.join(DEADLINE)
        assert not waiter.is_alive() and result == [None]
        assert queue.take_flags() == {"free_memory": True} and queue.take_flags() == {}


def test_concurrent_producers_lose_nothing(db_path):
    with PromptQueue(db_path) as queue:
        def produce(prefix):
            for index in range(25):
                put(queue, f"{prefix}{index}")
        threads = [threading.Thread(target=produce, args=(p,)) for p in "abcd"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        numbers = sorted(item.number for item in queue.pending())
        assert numbers == list(range(100))


def test_bad_max_history(db_path):
    with pytest.raises(ValueError, match="max_history"):
        PromptQueue(db_path, max_history=0)
