"""Which browser frontend the server shows at `/`, and the static routes that serve it.

The choice (`choose_front_end`) loads no aiohttp: `fluxgraph serve --help` and the CLI's parser stay light;
`add_static` imports it when the application is built.

Two frontends (docs/editor.md):
- `comfyui`: ComfyUI's official frontend, the static folder of the PyPI package `comfyui-frontend-package`
  (the optional extra `fluxgraph[frontend]`; GPL, so it is only ever installed by pip, never vendored or
  modified), or any folder given with `--front-end-root DIR` as ComfyUI's flag of that name;
- `builtin`: fluxgraph's own small editor, the `web/` folder of this repository.

The official frontend is the default when its package is importable. The builtin editor is always reachable
at `BUILTIN_PREFIX/` as well, so both can be used side by side. Everything is served from local files: no
request leaves the machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.folders import UnsafePathError, contained_path

if TYPE_CHECKING:
    from aiohttp import web

FRONT_ENDS = ("comfyui", "builtin")
OFFICIAL_PACKAGE = "comfyui_frontend_package"
BUILTIN_PREFIX = "/fluxgraph/editor"
NO_CACHE = {"Cache-Control": "no-cache"}
# A missing stylesheet or script is answered in its own type, so that the browser reports a plain 404 instead
# of a refused MIME type and nothing tries to read the error as JSON data.
TYPED_MISSES = {".css": "text/css", ".js": "text/javascript", ".mjs": "text/javascript"}
# The types a built frontend needs, whatever the machine's mime.types says (others: aiohttp's guess).
CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".json": "application/json",
                 ".map": "application/json", ".html": "text/html", ".svg": "image/svg+xml", ".woff2": "font/woff2",
                 ".woff": "font/woff", ".ico": "image/x-icon", ".webp": "image/webp", ".webm": "video/webm",
                 ".wasm": "application/wasm"}


class FrontEndError(ValueError):
    """A --front-end / --front-end-root choice that cannot be served (the message says why and what to do)."""


def official_frontend_dir() -> Path | None:
    """The static folder of the installed `comfyui_frontend_package` (it holds index.html), or None."""
    try:
        spec = importlib.util.find_spec(OFFICIAL_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        static = Path(location) / "static"
        if (static / "index.html").is_file():
            return static
    return None


def choose_front_end(front_end: str | None, front_end_root: str | None) -> Path | None:
    """The folder of the frontend served at `/`, or None for the builtin editor.

    `front_end` None picks `comfyui` when its package is installed, else `builtin`; `front_end_root` serves
    that folder (it must hold an index.html) and cannot be combined with `builtin`.
    """
    if front_end not in (None, *FRONT_ENDS):
        raise FrontEndError(f"--front-end must be one of {', '.join(FRONT_ENDS)}, not {front_end!r}")
    if front_end_root is not None:
        if front_end == "builtin":
            raise FrontEndError("--front-end-root serves a ComfyUI-style frontend; it cannot be combined with "
                                "--front-end builtin")
        root = Path(front_end_root).expanduser().resolve()
        if not (root / "index.html").is_file():
            raise FrontEndError(f"--front-end-root {front_end_root}: no index.html in that folder")
        return root
    if front_end == "builtin":
        return None
    official = official_frontend_dir()
    if official is None and front_end == "comfyui":
        raise FrontEndError("--front-end comfyui needs ComfyUI's frontend package: pip install "
                            "'fluxgraph[frontend]' (or comfyui-frontend-package), or use --front-end builtin")
    return official


def _index_handler(folder: Path, fallback: str):
    from aiohttp import web  # noqa: PLC0415 - aiohttp loads only when the application is built

    index = folder / "index.html"

    async def get_index(request: web.Request) -> web.StreamResponse:
        if index.is_file():
            return web.FileResponse(index, headers=NO_CACHE)
        return web.Response(text=fallback, content_type="text/html")

    return get_index


def _file_handler(folder: Path):
    from aiohttp import web  # noqa: PLC0415 - aiohttp loads only when the application is built

    from engine.server.errors import ApiError  # noqa: PLC0415 - it imports aiohttp

    async def get_file(request: web.Request) -> web.StreamResponse:
        """A file of the frontend (aiohttp's static route answers a missing file with an empty 404)."""
        relative = request.match_info["path"]
        try:
            path = contained_path(folder, relative)
        except UnsafePathError as exc:
            raise ApiError(404, "not_found", "Not found", str(exc)) from None
        if not path.is_file():
            content_type = TYPED_MISSES.get(Path(relative).suffix.lower())
            if content_type is not None:
                return web.Response(status=404, text=f"/* not found: {request.path[:200]} */\n",
                                    content_type=content_type)
            raise ApiError(404, "not_found", "Not found", f"no route or file for GET {request.path[:200]}")
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        return web.FileResponse(path, headers={"Content-Type": content_type} if content_type else None)

    return get_file


def add_static(app: web.Application, config: Any) -> None:
    """The frontend at `/` (the official one when `config.frontend_dir` is set, else the builtin editor of
    `config.web_dir`) and the builtin editor at BUILTIN_PREFIX/. Call last: the catch-all lets every API
    route win."""
    from aiohttp import web  # noqa: PLC0415 - aiohttp loads only when the application is built

    builtin = Path(config.web_dir)
    missing_editor = ("<!doctype html><title>fluxgraph</title><p>fluxgraph server is running. The editor "
                      "(web/index.html) is not installed; the API is under /api.</p>")

    async def to_builtin(request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect(BUILTIN_PREFIX + "/" + (f"?{request.query_string}"
                                                                if request.query_string else ""))

    app.router.add_get(BUILTIN_PREFIX, to_builtin)
    app.router.add_get(BUILTIN_PREFIX + "/", _index_handler(builtin, missing_editor))
    app.router.add_get(BUILTIN_PREFIX + "/{path:.+}", _file_handler(builtin))
    root = Path(config.frontend_dir) if getattr(config, "frontend_dir", None) else builtin
    app.router.add_get("/", _index_handler(root, missing_editor))
    app.router.add_get("/{path:.+}", _file_handler(root))  # registered last: every API route wins


def describe(config: Any) -> str:
    """One line for the start-up log: which frontend is at / and where the builtin editor is."""
    if getattr(config, "frontend_dir", None):
        return f"frontend: {config.frontend_dir} at /, builtin editor at {BUILTIN_PREFIX}/"
    return "frontend: the builtin editor at /"
