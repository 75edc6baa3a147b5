"""The official frontend's per-user state: /users and /settings (ComfyUI's shapes, single-user mode).

Each user has a folder `user/<name>/`; the frontend's settings are one JSON object in
`user/<name>/comfy.settings.json` (ComfyUI's file name), rewritten atomically on every change, so a crash never
leaves half a file. The user is `default` unless the `comfy-user` header names another user whose folder exists.
`user/fluxgraph/` (the queue) is never a user. /userdata (files under the same folder) is in `routes_userdata`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.core.atomic_files import write_text_atomic
from engine.server.errors import ApiError, json_response, read_json
from engine.server.state import state_of
from engine.server.user_files import check_relative_name

log = logging.getLogger(__name__)
DEFAULT_USER = "default"
SETTINGS_FILE = "comfy.settings.json"
RESERVED_USERS = frozenset({"fluxgraph"})  # folders of user/ that hold server state, not a user's files
MAX_SETTINGS_BYTES = 16 * 1024 * 1024
_SETTINGS_LOCK = web.AppKey("fluxgraph_settings_lock", asyncio.Lock)


def user_name(request: web.Request) -> str:
    """The `comfy-user` header's user when its folder exists, else `default` (ComfyUI's single-user mode)."""
    name = request.headers.get("comfy-user", "").strip()
    if not name or name == DEFAULT_USER:
        return DEFAULT_USER
    check_relative_name(name, "comfy-user")
    if "/" in name or "\\" in name or name.startswith(".") or name.lower() in RESERVED_USERS:
        raise ApiError(400, "invalid_user", "Invalid user name", f"comfy-user {name[:100]!r}")
    root = Path(state_of(request).runtime.folders.user_dir)
    if not (root / name).is_dir():
        return DEFAULT_USER
    return name


def user_root(request: web.Request, create: bool = True) -> Path:
    """`user/<user>/`, resolved (created when asked)."""
    root = Path(state_of(request).runtime.folders.user_dir) / user_name(request)
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def read_settings(path: Path) -> dict[str, Any]:
    """The settings object in `path`; {} when missing, and when unreadable (logged, the file is kept)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s (%s); answering empty settings", path, exc)
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        log.warning("%s is not valid JSON (%s); answering empty settings", path, exc)
        return {}
    return value if isinstance(value, dict) else {}


def _settings_path(request: web.Request) -> Path:
    return user_root(request) / SETTINGS_FILE


def _lock(request: web.Request) -> asyncio.Lock:
    return request.app[_SETTINGS_LOCK]


def install(app: web.Application) -> None:
    """Per-app state of these routes (one lock serialises the read-modify-write of the settings file)."""
    app[_SETTINGS_LOCK] = asyncio.Lock()


async def _read_body(request: web.Request) -> Any:
    return await read_json(request, limit=MAX_SETTINGS_BYTES, what="settings bodies")


async def _update(request: web.Request, changes: dict[str, Any]) -> None:
    path = _settings_path(request)
    loop = asyncio.get_running_loop()
    async with _lock(request):
        settings = await loop.run_in_executor(None, read_settings, path)
        settings.update(changes)
        await loop.run_in_executor(None, write_text_atomic, path,
                                   json.dumps(settings, indent=4, ensure_ascii=False))


async def get_settings(request: web.Request) -> web.Response:
    path = _settings_path(request)
    return json_response(await asyncio.get_running_loop().run_in_executor(None, read_settings, path))


async def get_setting(request: web.Request) -> web.Response:
    path = _settings_path(request)
    settings = await asyncio.get_running_loop().run_in_executor(None, read_settings, path)
    return json_response(settings.get(request.match_info["id"]))  # null for an unknown id, as ComfyUI


async def post_settings(request: web.Request) -> web.Response:
    """A JSON object merged into the stored settings (keys not sent are kept)."""
    body = await _read_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "Request body must be a JSON object of settings",
                       f"got a JSON {type(body).__name__}")
    await _update(request, body)
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    """Any JSON value stored under one setting id."""
    await _update(request, {request.match_info["id"]: await _read_body(request)})
    return web.Response(status=200)


async def get_users(request: web.Request) -> web.Response:
    """ComfyUI's single-user answer: storage on the server, nothing for the frontend to migrate."""
    return json_response({"storage": "server", "migrated": True})


async def post_users(request: web.Request) -> web.Response:
    raise ApiError(400, "single_user_mode", "Users cannot be created: the server runs in single-user mode",
                   f"every request uses the '{DEFAULT_USER}' user (user/{DEFAULT_USER}/)")


def routes() -> list[tuple[str, str, Any]]:
    return [
        ("GET", "/users", get_users), ("POST", "/users", post_users),
        ("GET", "/settings", get_settings), ("POST", "/settings", post_settings),
        ("GET", "/settings/{id}", get_setting), ("POST", "/settings/{id}", post_setting),
    ]
