"""Waiting on a condition instead of sleeping a fixed time. The deadlines are generous: they only turn a
hang into a failure with a message, and never decide whether something was fast enough."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable

DEADLINE = 60.0  # seconds; far above any normal wait, even on a loaded 2-core machine


def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def wait_until_async(condition: Callable[[], bool | Awaitable[bool]], timeout: float = DEADLINE,
                           what: str = "condition") -> None:
    """Like wait_until, for the event loop's thread; `condition` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        met = condition()
        if asyncio.iscoroutine(met):
            met = await met
        if met:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def blocked_in_wait(thread: threading.Thread) -> bool:
    """Whether `thread` is parked in threading.Condition.wait (e.g. a queue consumer with nothing to take)."""
    frame = sys._current_frames().get(thread.ident)  # noqa: SLF001 - the documented way to see another thread's stack
    while frame is not None:
        if frame.f_code is threading.Condition.wait.__code__:
            return True
        frame = frame.f_back
    return False
