"""The websocket route `/ws?clientId=...`: registers the socket with the hub (engine.server.events).

On connect the client gets the queue status and, when one of its prompts is running, the node it is on. Only
an opening `feature_flags` message from the client means anything; the rest is ignored, as in ComfyUI.
"""

from __future__ import annotations

import json
import uuid

from aiohttp import WSMsgType, web

from engine.server.errors import dumps
from engine.server.events import Client, EventHub, status_message
from engine.server.state import state_of


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    state = state_of(request)
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20)
    await ws.prepare(request)
    sid = request.query.get("clientId") or uuid.uuid4().hex
    sid = sid[:200]
    hub = state.hub
    client = await hub.connect(sid, ws)
    client.outbox.put_nowait(dumps({"type": "status", "data": status_message(state.queue.queue_remaining(), sid)}))
    current = state.worker.current_node_for(sid)
    if current is not None:
        client.outbox.put_nowait(dumps({"type": "executing", "data": {"node": current}}))
    first = True
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT and first:
                _handle_first_message(client, message.data, hub)
            first = False
            if message.type == WSMsgType.ERROR:
                break
    finally:
        await hub.disconnect(client)
    return ws


def _handle_first_message(client: Client, text: str, hub: EventHub) -> None:
    """Only an opening `feature_flags` message means anything; the rest is ignored, as in ComfyUI."""
    try:
        message = json.loads(text)
    except ValueError:
        return
    if isinstance(message, dict) and message.get("type") == "feature_flags" and isinstance(message.get("data"), dict):
        client.flags = dict(message["data"])
        client.outbox.put_nowait(dumps({"type": "feature_flags", "data": hub.server_flags()}))
