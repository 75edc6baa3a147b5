"""The shipped workflows (`workflows/*.json`) for the editor's "open" menu: GET /workflows[/{name}].

A fluxgraph route (ComfyUI's templates live elsewhere). Names are plain file names inside the folder; anything
else is refused before the disk is touched.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from engine.core.folders import UnsafePathError, contained_path
from engine.server.errors import ApiError, json_response, read_json
from engine.server.state import state_of
from engine.workflow.convert import convert_request


async def list_workflows(request: web.Request) -> web.Response:
    folder = state_of(request).config.workflows_dir
    names = sorted(p.name for p in folder.glob("*.json") if p.is_file()) if folder.is_dir() else []
    return json_response(names)


async def get_workflow(request: web.Request) -> web.Response:
    folder = state_of(request).config.workflows_dir
    name = request.match_info["name"]
    if "/" in name or "\\" in name or not name.endswith(".json"):
        raise ApiError(400, "invalid_filename", "A workflow name is a .json file name without folders",
                       repr(name[:100]))
    try:
        path = contained_path(folder, name)
    except UnsafePathError as exc:
        raise ApiError(400, "invalid_filename", "Invalid workflow name", str(exc)) from None
    if not path.is_file():
        raise ApiError(404, "unknown_workflow", "No shipped workflow with this name", name[:100])
    try:
        return json_response(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise ApiError(500, "broken_workflow", "The shipped workflow is not valid JSON", str(exc)[:200]) from None


async def convert_workflow(request: web.Request) -> web.Response:
    """UI-format workflow (subgraphs, reroutes, primitives, bypass) -> API prompt, as the editor queues it.

    Body `{"workflow": <UI workflow>}`; answers `{prompt, dropped, warnings, origins}` or a 400 in ComfyUI's
    `{error, node_errors}` shape.
    """
    runtime = state_of(request).runtime
    status, body = convert_request(await read_json(request), runtime.registry, runtime.folders)
    return json_response(body, status=status)


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/workflows", list_workflows), ("GET", "/workflows/{name}", get_workflow),
            ("POST", "/workflow/convert", convert_workflow)]
