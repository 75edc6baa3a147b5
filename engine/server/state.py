"""What every route handler reaches through `request.app[STATE]`: one object, built by `app.create_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.queue.store import PromptQueue
from engine.server.config import ServerConfig
from engine.server.events import EventHub
from engine.server.worker import PromptWorker


@dataclass
class ServerState:
    runtime: Any  # engine.backends.runtime.Runtime: folders, registry, cache, executor, models
    queue: PromptQueue
    hub: EventHub
    worker: PromptWorker
    config: ServerConfig

    def feature_flags(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": self.config.max_upload_bytes}


STATE = web.AppKey("fluxgraph_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]
