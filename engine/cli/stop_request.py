"""Ctrl-C during training: the first stops at the next step (the trainer saves its state), a second stops at once.

Shared by `fluxgraph train` (Mask2Former) and `fluxgraph train lora`.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopRequest:
    """Installs a SIGINT handler; the training loop calls `check()` each step, which raises KeyboardInterrupt
    once a stop was asked for."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
