"""One torch thread for a block of work: tiny models and training steps on a shared 2-core machine spend
most of their time in thread hand-offs with several (measured 8-10x slower), and one is as fast when idle."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    import torch  # noqa: PLC0415 - keeps torch out of the test runs that never touch it

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
