"""The websocket route `/ws?clientId=...`: registers the socket with the hub (engine.server.events).

On connect the client gets the queue status and, when one of its prompts is running, the node it is on. Only
an opening `feature_flags` message from the client means anything; the rest is ignored, as in ComfyUI. A
message over 1 MiB, or a first message nested deeper than `MAX_FIRST_MESSAGE_DEPTH`, closes the socket with
1009 (message too big) instead of reaching the JSON parser.
"""

from __future__ import annotations

import json
import re
import uuid

from aiohttp import WSCloseCode, WSMsgType, web

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
            if message.type == WSMsgType.TEXT and first and not _handle_first_message(client, message.data, hub):
                await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG,
                               message=f"message nested deeper than {MAX_FIRST_MESSAGE_DEPTH} levels".encode())
                break
            first = False
            if message.type == WSMsgType.ERROR:
                break
    finally:
        await hub.disconnect(client)
    return ws


MAX_FIRST_MESSAGE_DEPTH = 32  # a feature_flags message is 3 levels deep
# A string (closed or running to the end, never backtracked: linear time) or a bracket.
_TOKENS = re.compile(r'"(?:[^"\\]++|\\.?)*+(?:"|\Z)|[\[\]{}]', re.DOTALL)


def nesting_too_deep(text: str, limit: int) -> bool:
    """Whether JSON text opens more than `limit` arrays/objects at once (strings skipped), without parsing it."""
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        depth += 1 if token in "[{" else -1
        if depth > limit:
            return True
    return False


def _handle_first_message(client: Client, text: str, hub: EventHub) -> bool:
    """Only an opening `feature_flags` message means anything; the rest is ignored, as in ComfyUI.

    False when the message is nested too deeply to parse: the caller closes the socket.
    """
    if nesting_too_deep(text, MAX_FIRST_MESSAGE_DEPTH):
        return False
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return True
    if isinstance(message, dict) and message.get("type") == "feature_flags" and isinstance(message.get("data"), dict):
        client.flags = dict(message["data"])
        client.outbox.put_nowait(dumps({"type": "feature_flags", "data": hub.server_flags()}))
    return True
