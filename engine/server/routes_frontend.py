"""Routes the official ComfyUI frontend calls besides the core protocol, with ComfyUI's shapes.

/i18n (`{}`: no node pack ships translations), /global_subgraphs (`{}`), /experiment/models[/{folder}],
/view_metadata/{folder} (a safetensors file's `__metadata__`, read by the stdlib header reader of
engine/core/safetensors_header.py, which model loading shares), /internal/folder_paths,
/internal/logs[/raw] (the server's recent log lines), /templates/... (from the PyPI
`comfyui-workflow-templates` packages when installed, else an empty index), /user.css (the user's
stylesheet or an empty one), and fluxgraph's own frontend extension scripts under /extensions/fluxgraph/
(files of web/extensions/).
"""


from __future__ import annotations

import importlib.util
import mimetypes
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.core.folders import (DEFAULT_MODEL_FOLDERS, GGUF_EXTENSIONS, MODEL_EXTENSIONS, UnsafePathError,
                                 contained_path)
from engine.core.safetensors_header import HeaderError, read_header
from engine.server.errors import ApiError, json_response
from engine.server.log_ring import LOG_RING
from engine.server.routes_user import user_root
from engine.server.state import state_of
from engine.server.user_files import check_relative_name, contained_or_error

EXTENSION_PREFIX = "/extensions/fluxgraph/"
# Where the comfyui-workflow-templates packages keep their `templates/` folder (JSON first, then media bundles).
TEMPLATE_PACKAGES = ("comfyui_workflow_templates_json", "comfyui_workflow_templates",
                     "comfyui_workflow_templates_media_api", "comfyui_workflow_templates_media_image",
                     "comfyui_workflow_templates_media_video", "comfyui_workflow_templates_media_other",
                     "comfyui_workflow_templates_media_assets_01", "comfyui_workflow_templates_media_assets_02")
EMPTY_TEMPLATE_FILES: dict[str, Any] = {"index.json": [], "index_logo.json": {}}
LISTED_FOLDERS = tuple(k for k in DEFAULT_MODEL_FOLDERS if k != "configs")  # as ComfyUI's /experiment/models


async def get_i18n(request: web.Request) -> web.Response:
    return json_response({})


async def get_global_subgraphs(request: web.Request) -> web.Response:
    return json_response({})


def _folder_paths(request: web.Request, key: str) -> list[str]:
    return [str(p) for p in state_of(request).runtime.folders.model_dirs(key)]


async def get_experiment_models(request: web.Request) -> web.Response:
    return json_response([{"name": key, "folders": _folder_paths(request, key)} for key in LISTED_FOLDERS])


def _model_files(request: web.Request, folder: str) -> list[dict[str, Any]]:
    """The folder's model files as the frontend's model library lists them, with the root's index."""
    files = []
    for index, name, path in state_of(request).runtime.folders.model_files(folder, MODEL_EXTENSIONS | GGUF_EXTENSIONS):
        stat = path.stat()
        files.append({"name": name, "pathIndex": index, "modified": stat.st_mtime, "created": stat.st_ctime,
                      "size": stat.st_size})
    return files


def _known_folder(folder: str) -> str:
    if folder not in DEFAULT_MODEL_FOLDERS:
        raise ApiError(404, "unknown_model_folder", "Unknown model folder", folder[:100],
                       known=list(DEFAULT_MODEL_FOLDERS))
    return folder


async def get_experiment_models_folder(request: web.Request) -> web.Response:
    folder = _known_folder(request.match_info["folder"])
    return json_response(_model_files(request, folder))


def read_safetensors_metadata(path: Path) -> dict[str, Any] | None:
    """The `__metadata__` object of a safetensors header, or None (no metadata, not a safetensors file)."""
    try:
        return read_header(path).metadata or None
    except HeaderError:
        return None


async def get_view_metadata(request: web.Request) -> web.Response:
    folder = _known_folder(request.match_info["folder"])
    filename = request.query.get("filename", "")
    if not filename:
        raise ApiError(404, "missing_filename", "No filename given", "add ?filename=<model file>")
    check_relative_name(filename, "filename")
    if not filename.lower().endswith((".safetensors", ".sft")):
        raise ApiError(404, "no_metadata", "Only safetensors files have metadata", filename[:200])
    try:
        path = state_of(request).runtime.folders.model_path(folder, filename.replace("\\", "/"))
    except FileNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ApiError(404, "file_not_found", "Model file not found", f"{folder}/{filename[:200]}")
    metadata = read_safetensors_metadata(path)
    if metadata is None:
        raise ApiError(404, "no_metadata", "The file has no __metadata__", filename[:200])
    return json_response(metadata)


async def get_folder_paths(request: web.Request) -> web.Response:
    return json_response({key: _folder_paths(request, key) for key in DEFAULT_MODEL_FOLDERS})


async def get_logs(request: web.Request) -> web.Response:
    return json_response("".join(entry["m"] for entry in LOG_RING.entries()))


async def get_logs_raw(request: web.Request) -> web.Response:
    return json_response({"entries": LOG_RING.entries(), "size": {"cols": 120, "rows": 40}})


async def post_logs_subscribe(request: web.Request) -> web.Response:
    """Accepted; fluxgraph does not stream log lines over the websocket (the frontend polls /internal/logs)."""
    return web.Response(status=200)


def _template_file(name: str) -> Path | None:
    for package in TEMPLATE_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            try:
                path = contained_path(Path(location) / "templates", name)
            except UnsafePathError:
                return None
            if path.is_file():
                return path
    return None


async def get_template(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    check_relative_name(name, "template file")
    path = _template_file(name)
    if path is None:
        if name in EMPTY_TEMPLATE_FILES:  # no templates package: empty answers the templates browser can show
            return json_response(EMPTY_TEMPLATE_FILES[name])
        raise ApiError(404, "template_not_found", "Template file not found",
                       f"{name[:200]} (install comfyui-workflow-templates for the templates browser)")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.FileResponse(path, headers={"Content-Type": content_type})


async def get_user_css(request: web.Request) -> web.Response:
    path = user_root(request, create=False) / "user.css"
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return web.Response(text=text, content_type="text/css", headers={"Cache-Control": "no-cache"})


async def get_extension_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["path"]
    check_relative_name(name, "extension file")
    root = state_of(request).config.web_dir / "extensions"
    path = contained_or_error(root, name, name)
    if not path.is_file():
        raise ApiError(404, "not_found", "Not found", f"no extension file {name[:200]}")
    content_type = "application/javascript" if path.suffix == ".js" else (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})


def extension_urls(web_dir: Path) -> list[str]:
    root = web_dir / "extensions"
    if not root.is_dir():
        return []
    return [EXTENSION_PREFIX + p.relative_to(root).as_posix() for p in sorted(root.rglob("*.js")) if p.is_file()]


def routes() -> list[tuple[str, str, Any]]:
    """Served plain and under /api (ComfyUI serves /internal and /templates unprefixed: both work here)."""
    return [
        ("GET", "/i18n", get_i18n), ("GET", "/global_subgraphs", get_global_subgraphs),
        ("GET", "/experiment/models", get_experiment_models),
        ("GET", "/experiment/models/{folder}", get_experiment_models_folder),
        ("GET", "/view_metadata/{folder}", get_view_metadata),
        ("GET", "/internal/folder_paths", get_folder_paths), ("GET", "/internal/logs", get_logs),
        ("GET", "/internal/logs/raw", get_logs_raw), ("POST", "/internal/logs/subscribe", post_logs_subscribe),
        ("GET", "/templates/{file:.+}", get_template), ("GET", "/user.css", get_user_css),
        ("GET", EXTENSION_PREFIX + "{path:.+}", get_extension_file),
    ]
