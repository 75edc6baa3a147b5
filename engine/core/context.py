"""The narrow context a node function receives: progress, interrupt, folders, models, its own identity.

Nodes never see the server or the executor; this object is all they get (InvokeAI-style).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable


class Interrupted(Exception):
    """Raised inside a node when the user interrupted the prompt."""


class InterruptFlag:
    """A cooperative interrupt: set from any thread, checked between nodes and inside long nodes."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted("interrupted by user")


ProgressCallback = Callable[[str, int, int, Any], None]  # (node_id, value, max, preview image or None)
SendCallback = Callable[[str, dict], None]
# extra_data key the queue sets on a prompt run again after a crash or a lost worker (NodeContext.resumed)
RESUMED_KEY = "fluxgraph_resumed"


@dataclass
class NodeContext:
    node_id: str = ""
    display_node_id: str = ""
    class_type: str = ""
    prompt_id: str | None = None
    folders: Any = None  # engine.core.folders.FolderPaths
    models: Any = None  # engine.memory.manager.MemoryManager (or None where no models are used)
    prompt: dict[str, Any] = field(default_factory=dict)
    extra_pnginfo: dict[str, Any] | None = None
    interrupt: InterruptFlag = field(default_factory=InterruptFlag)
    on_progress: ProgressCallback | None = None
    on_send: SendCallback | None = None
    resumed: bool = False  # this prompt is running again after the server or its worker stopped under it

    def check_interrupt(self) -> None:
        self.interrupt.check()

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report step progress (value out of total) and check for an interrupt."""
        if self.on_progress is not None:
            self.on_progress(self.node_id, int(value), int(total), preview)
        self.interrupt.check()

    def send(self, event_type: str, data: dict[str, Any]) -> None:
        """Send a custom event to the prompt's client (e.g. training loss)."""
        if self.on_send is not None:
            self.on_send(event_type, {**data, "node": self.node_id, "prompt_id": self.prompt_id})
