"""/userdata and /v2/userdata: the frontend's files (saved workflows, keybindings...) under `user/<user>/`.

ComfyUI's routes and answers: list a folder (`dir`, `recurse`, `split`, `full_info`; 404 when it does not
exist), read, write (`overwrite`, `full_info`; 409 when the file exists and `overwrite=false`), move and delete
one file named by a URL-encoded path (`workflows%2Fa.json`). Names are checked exactly as /view checks them
(`engine.server.user_files.check_relative_name`: 400) and must stay inside the user's folder (403, symlinks
included). Writes are atomic and limited to `--max-upload-size`.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.core.atomic_files import TEMP_NAME, atomic_write
from engine.server.errors import ApiError, json_response, query_bool, read_body
from engine.server.routes_user import user_root
from engine.server.state import state_of
from engine.server.user_files import check_relative_name, contained_or_error

# served as themselves; anything else (HTML, SVG, scripts) as a download, so a stored file never runs as a page
INLINE_TYPES = frozenset({"application/json", "text/plain", "image/png", "image/jpeg", "image/webp", "image/gif"})
STANDARD_DIRS = ("workflows", "subgraphs")  # folders the frontend lists at boot


def resolve(root: Path, name: str, what: str = "file") -> Path:
    """`root / name`, checked as /view checks names (400) and contained in `root` (403)."""
    check_relative_name(name, what)
    return contained_or_error(root, name.replace("\\", "/"), name, leaves="the user's folder")


def _file_info(path: Path, relative: str) -> dict[str, Any]:
    stat = path.stat()
    return {"path": relative, "size": stat.st_size, "modified": stat.st_mtime, "created": stat.st_ctime}


def _list_dir(folder: Path, recurse: bool) -> list[str]:
    """Files under `folder` (relative, `/`-separated, sorted), without the unfinished `.part` of a write."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        base = Path(dirpath).relative_to(folder)
        names.extend((base / f).as_posix() for f in sorted(filenames) if not TEMP_NAME.match(f))
        if not recurse:
            break
    return names


async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir", "")
    if not directory:
        raise ApiError(400, "missing_dir", "Query parameter 'dir' is required", "e.g. ?dir=workflows")
    recurse, full_info = query_bool(request, "recurse", False), query_bool(request, "full_info", False)
    split = query_bool(request, "split", False)
    folder = resolve(user_root(request), directory, "dir")
    if directory in STANDARD_DIRS:
        folder.mkdir(parents=True, exist_ok=True)  # a fresh user lists [] instead of a 404 the browser logs
    if not folder.is_dir():
        raise ApiError(404, "directory_not_found", "Directory not found", directory[:200])

    def listing() -> list[Any]:
        names = _list_dir(folder, recurse)
        if full_info:
            return [_file_info(folder / name, name) for name in names]
        if split:
            return [[name, *name.split("/")] for name in names]
        return names

    return json_response(await asyncio.get_running_loop().run_in_executor(None, listing))


async def list_userdata_v2(request: web.Request) -> web.Response:
    """One folder's entries: {name, path, type: file|directory, size (files), modified}, sorted by name."""
    relative = request.query.get("path", "").strip("/")
    root = user_root(request)
    folder = resolve(root, relative, "path") if relative else root
    if not folder.exists():
        raise ApiError(404, "directory_not_found", "Directory not found", relative[:200])
    if not folder.is_dir():
        raise ApiError(400, "not_a_directory", "The path is a file, not a directory", relative[:200])
    entries = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        if TEMP_NAME.match(child.name):
            continue
        stat = child.stat()
        entry: dict[str, Any] = {"name": child.name, "path": f"{relative}/{child.name}" if relative else child.name,
                                 "type": "directory" if child.is_dir() else "file"}
        if entry["type"] == "file":
            entry["size"] = stat.st_size
        entry["modified"] = stat.st_mtime
        entries.append(entry)
    return json_response(entries)


def _existing_file(request: web.Request, name: str) -> Path:
    path = resolve(user_root(request), name)
    if not path.is_file():
        raise ApiError(404, "file_not_found", "File not found", name[:200])
    return path


async def get_userdata(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    if name == "user.css" and not resolve(user_root(request), name).is_file():
        return web.Response(text="", content_type="text/css")  # index.html links it as a stylesheet
    path = _existing_file(request, name)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {"Content-Type": content_type if content_type in INLINE_TYPES else "application/octet-stream",
               "Cache-Control": "no-cache"}
    return web.FileResponse(path, headers=headers)


async def post_userdata(request: web.Request) -> web.Response:
    """The raw body becomes the file (folders created); the answer is its path, or its info with full_info."""
    name = request.match_info["file"]
    overwrite, full_info = query_bool(request, "overwrite", True), query_bool(request, "full_info", False)
    root = user_root(request)
    path = resolve(root, name)
    if path == root or path.is_dir():
        raise ApiError(400, "is_a_directory", "The path names a folder, not a file", name[:200])
    if path.exists() and not overwrite:
        raise ApiError(409, "file_exists", "File already exists", name[:200])
    limit = state_of(request).config.max_upload_bytes
    data = await read_body(request, limit, "user files")

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as stream:
            stream.write(data)

    await asyncio.get_running_loop().run_in_executor(None, write)
    relative = path.relative_to(root).as_posix()
    return json_response(_file_info(path, relative) if full_info else relative)


async def delete_userdata(request: web.Request) -> web.Response:
    path = _existing_file(request, request.match_info["file"])
    path.unlink()
    return web.Response(status=204)


async def move_userdata(request: web.Request) -> web.Response:
    source_name, dest_name = request.match_info["file"], request.match_info["dest"]
    overwrite, full_info = query_bool(request, "overwrite", True), query_bool(request, "full_info", False)
    root = user_root(request)
    source = _existing_file(request, source_name)
    dest = resolve(root, dest_name, "destination")
    if dest == root or dest.is_dir():
        raise ApiError(400, "is_a_directory", "The destination names a folder, not a file", dest_name[:200])
    if dest.exists() and not overwrite:
        raise ApiError(409, "file_exists", "File already exists", dest_name[:200])
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, dest)
    relative = dest.relative_to(root).as_posix()
    return json_response(_file_info(dest, relative) if full_info else relative)


def routes() -> list[tuple[str, str, Any]]:
    return [
        ("GET", "/userdata", list_userdata), ("GET", "/v2/userdata", list_userdata_v2),
        ("GET", "/userdata/{file}", get_userdata), ("POST", "/userdata/{file}", post_userdata),
        ("DELETE", "/userdata/{file}", delete_userdata),
        ("POST", "/userdata/{file}/move/{dest}", move_userdata),
    ]
