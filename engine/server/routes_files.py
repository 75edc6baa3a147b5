"""GET /view: files from input/, output/ and temp/, never from anywhere else.

Path checks (ComfyUI's, then ours): an empty name, an absolute name or `..` -> 400; an unknown type -> 400;
anything that resolves outside its root, through the subfolder, the name or a symlink -> 403; a missing file
-> 404. Only image types are served inline; every other file is an attachment, and every answer carries
`X-Content-Type-Options: nosniff` and a sandboxing CSP, so an uploaded or generated file can never run as a
page on this origin (stored XSS, CVE-2024-10099 / CVE-2026-56670).
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from engine.server.errors import ApiError
from engine.server.state import state_of
from engine.server.user_files import resolve_user_file

INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/avif"})
# Types a browser could execute or render as a document: never served under their own type.
ACTIVE_TYPES = ("text/html", "application/xhtml+xml", "image/svg+xml", "text/javascript",
                "application/javascript", "text/css", "text/xml", "application/xml")
SAFE_FILE_HEADERS = {"X-Content-Type-Options": "nosniff",
                     "Content-Security-Policy": "default-src 'none'; sandbox",
                     "Cache-Control": "no-cache"}


def content_disposition(kind: str, filename: str) -> str:
    """RFC 6266 header with the name percent-encoded: no quoting or header-injection tricks survive."""
    return f"{kind}; filename*=UTF-8''{quote(filename, safe='')}"


def _file_response(path: Path) -> web.StreamResponse:
    guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    inline = guessed in INLINE_IMAGE_TYPES
    if guessed.startswith(ACTIVE_TYPES) or not inline:
        content_type = "application/octet-stream" if guessed.startswith(ACTIVE_TYPES) else guessed
    else:
        content_type = guessed
    headers = {**SAFE_FILE_HEADERS, "Content-Type": content_type,
               "Content-Disposition": content_disposition("inline" if inline else "attachment", path.name)}
    return web.FileResponse(path, headers=headers)


def _parse_preview(value: str) -> tuple[str, int]:
    kind, _, quality = value.partition(";")
    image_format = kind.strip().lower()
    if image_format not in ("webp", "jpeg"):
        image_format = "webp"
    try:
        quality_value = int(quality) if quality else 90
    except ValueError:
        raise ApiError(400, "invalid_query", "preview quality must be an integer", repr(value[:50])) from None
    if not 1 <= quality_value <= 100:
        raise ApiError(400, "invalid_query", "preview quality must be between 1 and 100", str(quality_value))
    return image_format, quality_value


def _render_image(path: Path, channel: str, preview: tuple[str, int] | None, max_pixels: int) -> tuple[bytes, str]:
    """Re-encode an image for `channel=rgb|a` or `preview=webp;90` (runs in a thread)."""
    from PIL import Image  # noqa: PLC0415 - only these queries need PIL

    with Image.open(path) as picture:
        if picture.width * picture.height > max_pixels:
            raise ApiError(400, "image_too_large", "Image has too many pixels to re-encode",
                           f"{picture.width}x{picture.height}")
        picture.load()
        if channel == "a":
            alpha = picture.getchannel("A") if "A" in picture.getbands() else Image.new("L", picture.size, 255)
            picture = Image.new("RGBA", picture.size, (0, 0, 0, 255))
            picture.putalpha(alpha)
        elif channel == "rgb":
            picture = picture.convert("RGB")
        buffer = io.BytesIO()
        if preview is not None:
            image_format, quality = preview
            if image_format == "jpeg":
                picture = picture.convert("RGB")  # JPEG has no alpha
            picture.save(buffer, format=image_format.upper(), quality=quality)
            return buffer.getvalue(), f"image/{image_format}"
        picture.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"


async def get_view(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    query = request.query
    if "filename" not in query:
        raise ApiError(404, "missing_filename", "Missing 'filename' query parameter", "GET /view?filename=...")
    path = resolve_user_file(state.runtime.folders, query["filename"], query.get("type", "output"),
                             query.get("subfolder", ""))
    if not path.is_file():
        raise ApiError(404, "file_not_found", "File not found", query["filename"][:200])
    channel = query.get("channel", "rgba").lower()
    if channel not in ("rgba", "rgb", "a"):
        raise ApiError(400, "invalid_query", "channel must be rgba, rgb or a", repr(channel[:20]))
    preview = _parse_preview(query["preview"]) if query.get("preview") else None
    if channel == "rgba" and preview is None:
        return _file_response(path)
    if preview is not None and "a" in query.get("channel", "").lower():
        preview = ("webp", preview[1])  # an alpha channel was asked for: only webp keeps it
    if mimetypes.guess_type(path.name)[0] not in INLINE_IMAGE_TYPES:
        raise ApiError(400, "not_an_image", "channel and preview apply to images only", path.name)
    try:
        data, content_type = await asyncio.get_running_loop().run_in_executor(
            None, _render_image, path, channel, preview, state.config.max_image_pixels)
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever PIL raises on a bad file is a 400, not a crash
        raise ApiError(400, "not_an_image", "The file could not be decoded as an image",
                       f"{type(exc).__name__}: {exc}") from None
    return web.Response(body=data, content_type=content_type,
                        headers={**SAFE_FILE_HEADERS, "Content-Disposition": content_disposition("inline", path.name)})


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/view", get_view)]
