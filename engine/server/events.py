"""The hub that routes events to websocket clients (the route itself: engine.server.websocket).

Routing follows ComfyUI (docs/protocol.md §4.1): messages about a prompt go to the socket whose id is the prompt's
`client_id`; for a prompt without one, the execution messages are dropped, while `progress`, previews,
`execution_interrupted` and custom node messages are broadcast. Queue status goes to everyone.

The worker thread calls `publish` from outside the event loop. Events are appended to one hand-over list
and the loop is woken (`call_soon_threadsafe`) only when that list was empty: a node chain that emits a
hundred events in a burst costs a few wake-ups, not a hundred GIL ping-pongs between the threads. Each socket
has its own send queue and writer task, so messages arrive in the order they were published.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from engine.server.errors import dumps

log = logging.getLogger(__name__)

# Dropped when the prompt has no client_id (only its own client cares about them).
CLIENT_ONLY_EVENTS = frozenset({"execution_start", "execution_cached", "executing", "executed",
                                "execution_success", "execution_error", "progress_state"})
PREVIEW_IMAGE = 1
MAX_BACKLOG = 50_000  # messages queued for one socket before it is dropped
PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_FORMAT_CODES = {"JPEG": 1, "PNG": 2}


@dataclass
class Client:
    sid: str
    ws: web.WebSocketResponse
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    flags: dict[str, Any] = field(default_factory=dict)
    writer: asyncio.Task | None = None

    @property
    def wants_preview_metadata(self) -> bool:
        return bool(self.flags.get("supports_preview_metadata"))


class EventHub:
    def __init__(self, server_flags: Callable[[], dict[str, Any]]) -> None:
        self.clients: dict[str, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server_flags = server_flags
        self.bytes_sent = 0  # for the benchmark: websocket payload bytes since start
        self.messages_sent = 0
        self._handover: list[tuple[Callable[..., None], tuple]] = []
        self._handover_lock = threading.Lock()
        self._drain_scheduled = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    # ----- from any thread
    def publish(self, event: str, data: dict[str, Any], client_id: str | None = None,
                broadcast: bool = False) -> None:
        """Send a JSON message: to `client_id`, to everyone (`broadcast`), or by ComfyUI's routing rule."""
        self._hand_over(self._dispatch_json, (event, data, client_id, broadcast))

    def publish_preview(self, image_bytes: bytes, image_format: str, metadata: dict[str, Any],
                        client_id: str | None) -> None:
        self._hand_over(self._dispatch_preview, (image_bytes, image_format, metadata, client_id))

    def _hand_over(self, dispatch: Callable[..., None], args: tuple) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self._handover_lock:
            self._handover.append((dispatch, args))
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed meanwhile (shutdown)
            pass

    def _drain(self) -> None:
        with self._handover_lock:
            batch, self._handover = self._handover, []
            self._drain_scheduled = False
        for dispatch, args in batch:
            dispatch(*args)

    # ----- on the loop
    def _targets(self, event: str, client_id: str | None, broadcast: bool) -> list[Client]:
        if broadcast:
            return list(self.clients.values())
        if client_id is not None:
            client = self.clients.get(client_id)
            return [client] if client is not None else []
        if event in CLIENT_ONLY_EVENTS:
            return []
        return list(self.clients.values())

    def _dispatch_json(self, event: str, data: dict[str, Any], client_id: str | None, broadcast: bool) -> None:
        targets = self._targets(event, client_id, broadcast)
        if targets:
            text = dumps({"type": event, "data": data})
            for client in targets:
                self._enqueue(client, text)

    def _enqueue(self, client: Client, message: str | bytes) -> None:
        if client.outbox.qsize() >= MAX_BACKLOG:  # a client that stopped reading must not eat the memory
            if self.clients.get(client.sid) is client:
                log.warning("websocket %s is not reading; closing it", client.sid)
                del self.clients[client.sid]
                asyncio.ensure_future(client.ws.close(code=1008, message=b"too far behind"))
            return
        client.outbox.put_nowait(message)

    def _dispatch_preview(self, image_bytes: bytes, image_format: str, metadata: dict[str, Any],
                          client_id: str | None) -> None:
        plain = with_meta = None
        for client in self._targets("progress", client_id, False):
            if client.wants_preview_metadata:
                if with_meta is None:
                    meta = json.dumps({**metadata, "image_type": f"image/{image_format.lower()}"}).encode()
                    with_meta = (struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image_bytes)
                self._enqueue(client, with_meta)
            else:
                if plain is None:
                    code = _IMAGE_FORMAT_CODES.get(image_format.upper(), 1)
                    plain = struct.pack(">II", PREVIEW_IMAGE, code) + image_bytes
                self._enqueue(client, plain)

    async def _write(self, client: Client) -> None:
        while True:
            message = await client.outbox.get()
            if message is None:
                return
            try:
                if isinstance(message, str):
                    await client.ws.send_str(message)
                    self.bytes_sent += len(message.encode("utf-8"))
                else:
                    await client.ws.send_bytes(message)
                    self.bytes_sent += len(message)
                self.messages_sent += 1
            except (ConnectionError, RuntimeError):
                return  # the socket closed; the reader side cleans up

    # ----- connection lifecycle
    async def connect(self, sid: str, ws: web.WebSocketResponse) -> Client:
        old = self.clients.get(sid)
        if old is not None:  # the same clientId reconnecting replaces the old socket
            await self.disconnect(old)
            await old.ws.close()
        client = Client(sid, ws)
        client.writer = asyncio.ensure_future(self._write(client))
        self.clients[sid] = client
        return client

    async def disconnect(self, client: Client) -> None:
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]
        client.outbox.put_nowait(None)
        if client.writer is not None:
            await asyncio.gather(client.writer, return_exceptions=True)

    async def close_all(self) -> None:
        for client in list(self.clients.values()):
            await self.disconnect(client)
            await client.ws.close(code=1001, message=b"server shutdown")


def status_message(queue_remaining: int, sid: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return data
