"""Builds the aiohttp application: middlewares, every route (plain and under /api), the websocket, static.

`create_app(runtime, config)` is the whole server minus the socket; tests drive it with aiohttp's test
client. The queue lives in `<user dir>/fluxgraph/queue.sqlite3` unless a queue is passed in.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from engine.backends.contract import Backend
from engine.backends.factory import make_backend
from engine.core.atomic_files import remove_stale_parts
from engine.queue.store import PromptQueue
from engine.server import frontends, log_ring, routes_frontend, routes_jobs, routes_user, routes_userdata
from engine.server import routes_files, routes_generate, routes_info, routes_prompt, routes_workflows, uploads
from engine.server.config import ServerConfig
from engine.server.errors import ApiError, json_response
from engine.server.events import EventHub, status_message
from engine.server.security import make_security_middleware
from engine.server.state import STATE, ServerState
from engine.server.websocket import websocket_handler
from engine.server.worker import PromptWorker

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def queue_path(runtime: Any) -> Path:
    return Path(runtime.folders.user_dir) / "fluxgraph" / "queue.sqlite3"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error body with a specific message; nothing escapes as HTML or a crash."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message, details = _http_error_text(request, exc)
        body = ApiError(exc.status, exc.reason.lower().replace(" ", "_"), message, details).body()
        response = json_response(body, status=exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:  # a bug: log it, answer 500, keep serving
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response(ApiError(500, "internal_error", "Internal server error",
                                      f"{type(exc).__name__}: {exc}"[:300]).body(), status=500)


def _http_error_text(request: web.Request, exc: web.HTTPException) -> tuple[str, str]:
    if exc.status == 404:
        return "Not found", f"no route or file for {request.method} {request.path[:200]}"
    if exc.status == 405:
        return "Method not allowed", f"{request.method} {request.path[:200]}; allowed: {exc.headers.get('Allow', '')}"
    if exc.status == 413:
        return "Request body too large", exc.text or ""
    return exc.reason, (exc.text or "")[:300]


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.path.endswith((".js", ".css")):
        response.headers.setdefault("Cache-Control", "no-cache")


def _add_routes(app: web.Application, table: list[tuple[str, str, Handler]]) -> None:
    for method, path, handler in table:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)


# The start-up sweep of stale parts runs beside serving (it only removes files untouched for a minute, so it
# never races a save); cleanup waits for it. The app holds {"future": ...} once it has started.
STALE_PARTS_SWEEP = web.AppKey("fluxgraph_stale_parts_sweep", dict)


def _remove_stale_parts(runtime: Any) -> None:
    """Half-written files of a save that a kill -9 interrupted (engine.core.atomic_files) go at start-up."""
    folders = runtime.folders
    removed = remove_stale_parts(p for p in (folders.input_dir, folders.output_dir, folders.temp_dir) if p.is_dir())
    if removed:
        log.warning("removed %d unfinished file(s) left by an interrupted save: %s", len(removed),
                    ", ".join(str(p) for p in removed[:5]) + (", ..." if len(removed) > 5 else ""))


def create_app(runtime: Any, config: ServerConfig | None = None, queue: PromptQueue | None = None,
               backend: Backend | None = None) -> web.Application:
    """`backend`: an executor backend (engine.backends.contract); by default the one `config.executor` names."""
    config = config or ServerConfig()
    queue = queue or PromptQueue(queue_path(runtime), max_history=config.max_history)
    state_holder: dict[str, ServerState] = {}
    hub = EventHub(lambda: state_holder["state"].feature_flags())
    if backend is None:
        backend = make_backend(runtime, config)
    worker = PromptWorker(runtime, queue, hub, preview_size=config.preview_size, backend=backend)
    state = ServerState(runtime=runtime, queue=queue, hub=hub, worker=worker, config=config)
    state_holder["state"] = state

    app = web.Application(middlewares=[error_middleware, make_security_middleware(config)],
                          client_max_size=config.max_upload_bytes + 1024 * 1024)
    app[STATE] = state
    app[STALE_PARTS_SWEEP] = sweep = {}
    app.on_response_prepare.append(_security_headers)
    _add_routes(app, routes_prompt.routes() + routes_info.routes() + routes_files.routes() + uploads.routes())
    _add_routes(app, routes_generate.routes() + routes_workflows.routes())
    _add_routes(app, routes_user.routes() + routes_userdata.routes() + routes_jobs.routes() + routes_frontend.routes())
    routes_user.install(app)
    log_ring.install()
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/api/ws", websocket_handler)
    frontends.add_static(app, config)  # last: its catch-all lets every route above win

    queue.add_listener(lambda: hub.publish("status", status_message(queue.queue_remaining()), broadcast=True))

    async def on_startup(app: web.Application) -> None:
        hub.bind(asyncio.get_running_loop())
        sweep["future"] = asyncio.get_running_loop().run_in_executor(None, _remove_stale_parts, runtime)
        worker.start()
        if queue.recovered:
            log.warning("resuming prompt(s) interrupted by the last shutdown: %s", ", ".join(queue.recovered))

    async def on_shutdown(app: web.Application) -> None:
        await hub.close_all()

    async def on_cleanup(app: web.Application) -> None:
        if "future" in sweep:
            await sweep["future"]
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
        queue.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
