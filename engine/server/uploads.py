"""POST /upload/image and /upload/mask: size-limited, decoded-as-image, sanitised, contained, atomic.

- The multipart body is streamed and refused with 413 past `--max-upload-size` (default 50 MB).
- The file must decode as an image whose pixel count stays under the decompression-bomb limit, and its name
  must carry an image extension: an HTML or SVG page can never be stored as an "image".
- The name is reduced to a plain file name (no folders, control or bidi-override characters, leading dots;
  not UTF-8 -> 400); the subfolder must stay inside the type's root and be a name the file system can hold.
- Without `overwrite`, a file with identical content is reused, otherwise `name (1).ext`, `name (2).ext`...
- Files are written to a temporary name and renamed, so readers never see half a file.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from engine.core.atomic_files import write_bytes_atomic
from engine.core.file_digest import file_sha256
from engine.core.folders import FILE_TYPES
from engine.core.prompt_paths import UNSAFE_NAME_CHARACTERS
from engine.server.errors import ApiError, json_response, read_limited
from engine.server.state import ServerState, state_of
from engine.server.user_files import check_relative_name, resolve_user_file

UPLOAD_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MAX_FIELD_BYTES = 64 * 1024
MAX_NAME_LENGTH = 200
_UNSAFE_NAME_CHARS = re.compile('[<>:"/\\\\|?*]|' + UNSAFE_NAME_CHARACTERS.pattern)


@dataclass
class UploadForm:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    data: bytes = b""


async def read_upload_form(request: web.Request, file_field: str, max_bytes: int) -> UploadForm:
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "invalid_upload", "Uploads must be multipart/form-data",
                       f"got Content-Type {request.content_type!r}")
    form = UploadForm()
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == file_field and part.filename is not None:
                form.filename = part.filename
                form.data = await _read_limited(part, max_bytes, "file", 413)
            elif isinstance(part, BodyPartReader) and part.name:
                raw = await _read_limited(part, MAX_FIELD_BYTES, f"form field '{part.name}'", 400)
                form.fields[part.name] = raw.decode("utf-8", errors="replace")
    except ApiError:
        raise
    except (ValueError, AssertionError, UnicodeError) as exc:
        raise ApiError(400, "invalid_upload", "Malformed multipart body", str(exc)[:200]) from None
    except HttpProcessingError as exc:  # a part's headers: NUL, CR or LF inside a header or its file name
        raise ApiError(400, "invalid_upload", "Malformed multipart part header (a header or file name holds a "
                       "control character such as NUL)", str(exc).strip()[:200]) from None
    return form


async def _read_limited(part: Any, limit: int, what: str, status: int) -> bytes:
    too_large = ApiError(status, "upload_too_large", f"The {what} is larger than the limit", f"limit {limit} bytes",
                         limit=limit)
    return await read_limited(part.read_chunk, limit, too_large)


def sanitize_filename(name: str) -> str:
    """A plain, safe file name from whatever the client sent (400 when nothing usable is left)."""
    original = name
    name = unquote(name)  # some clients (aiohttp) percent-encode the name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes reach us as lone surrogates
        raise ApiError(400, "invalid_filename", "The upload's file name is not valid UTF-8",
                       repr(original[:100])) from None
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # the base name only
    name = _UNSAFE_NAME_CHARS.sub("_", name).strip().lstrip(".").rstrip(". ")
    stem, suffix = os.path.splitext(name)
    if len(name.encode("utf-8")) > MAX_NAME_LENGTH:
        stem = stem.encode("utf-8")[:MAX_NAME_LENGTH - len(suffix.encode("utf-8"))].decode("utf-8", "ignore")
        name = stem + suffix
    if not stem:
        raise ApiError(400, "invalid_filename", "The upload has no usable file name", repr(original[:100]))
    if suffix.lower() not in UPLOAD_EXTENSIONS:
        raise ApiError(400, "invalid_filename", "Uploads must have an image file extension",
                       f"{name!r}; allowed: {sorted(UPLOAD_EXTENSIONS)}")
    return name


def check_image(data: bytes, max_pixels: int) -> Any:
    """Decode the upload (first frame) and return the PIL image; 400 when it is not one, or a bomb."""
    from PIL import Image  # noqa: PLC0415 - only uploads need PIL

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
            frames = getattr(picture, "n_frames", 1)
            if picture.width * picture.height * max(1, frames) > max_pixels:
                raise ApiError(400, "image_too_large", "The image has too many pixels (decompression-bomb limit)",
                               f"{picture.width}x{picture.height}x{frames} frames; limit {max_pixels} pixels",
                               limit=max_pixels)
            picture.load()
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever PIL raises on a bad upload is a 400, not a crash
        raise ApiError(400, "not_an_image", "The upload could not be decoded as an image",
                       f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return picture


def _target_folder(state: ServerState, form: UploadForm) -> tuple[Path, str, str]:
    file_type = form.fields.get("type") or "input"
    if file_type not in FILE_TYPES:
        raise ApiError(400, "invalid_type", "Unknown upload type", f"{file_type[:50]!r}; expected one of "
                       f"{list(FILE_TYPES)}")
    subfolder = form.fields.get("subfolder", "")
    if subfolder:
        check_relative_name(subfolder, "subfolder")
    folder = resolve_user_file(state.runtime.folders, "probe.png", file_type, subfolder).parent
    return folder, file_type, subfolder


def store_file(folder: Path, name: str, data: bytes, overwrite: bool) -> str:
    """Write `data` as `name` in `folder` (atomic); returns the name actually used."""
    folder.mkdir(parents=True, exist_ok=True)
    stem, suffix = os.path.splitext(name)
    digest = hashlib.sha256(data).hexdigest()
    candidate, index = name, 0
    while not overwrite and (folder / candidate).exists():
        existing = folder / candidate
        if existing.is_file() and file_sha256(existing) == digest:
            return candidate  # identical content already there: reuse it
        index += 1
        candidate = f"{stem} ({index}){suffix}"
    write_bytes_atomic(folder / candidate, data)
    return candidate


def _overwrite(form: UploadForm) -> bool:
    return form.fields.get("overwrite", "").strip().lower() in ("true", "1")


async def upload_image(request: web.Request) -> web.Response:
    state = state_of(request)
    form = await read_upload_form(request, "image", state.config.max_upload_bytes)
    if form.filename is None:
        raise ApiError(400, "missing_file", "No image file in the upload", "send the file in the 'image' field")
    name = sanitize_filename(form.filename)
    folder, file_type, subfolder = _target_folder(state, form)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, check_image, form.data, state.config.max_image_pixels)
    final = await loop.run_in_executor(None, store_file, folder, name, form.data, _overwrite(form))
    return json_response({"name": final, "subfolder": subfolder, "type": file_type})


def _compose_mask(original_path: Path, mask_data: bytes, max_pixels: int) -> bytes:
    """The original image with the uploaded image's alpha as its alpha, PNG text chunks kept."""
    from PIL import Image, PngImagePlugin  # noqa: PLC0415 - only uploads need PIL

    mask = check_image(mask_data, max_pixels)
    if "A" not in mask.getbands():
        raise ApiError(400, "invalid_mask", "The mask upload has no alpha channel", "send an RGBA PNG")
    with Image.open(original_path) as original:
        if original.width * original.height > max_pixels:
            raise ApiError(400, "image_too_large", "The original image has too many pixels",
                           f"{original.width}x{original.height}")
        original.load()
        text = dict(getattr(original, "text", {}) or {})
        picture = original.convert("RGBA")
    alpha = mask.getchannel("A")
    if alpha.size != picture.size:
        alpha = alpha.resize(picture.size)
    picture.putalpha(alpha)
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(str(key), str(value))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


async def upload_mask(request: web.Request) -> web.Response:
    state = state_of(request)
    form = await read_upload_form(request, "image", state.config.max_upload_bytes)
    if form.filename is None:
        raise ApiError(400, "missing_file", "No mask image in the upload", "send the file in the 'image' field")
    try:
        ref = json.loads(form.fields.get("original_ref", ""))
    except ValueError:
        raise ApiError(400, "invalid_upload", "'original_ref' must be a JSON object",
                       'e.g. {"filename": "x.png", "subfolder": "", "type": "output"}') from None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise ApiError(400, "invalid_upload", "'original_ref' needs a 'filename' string", str(ref)[:200])
    subfolder_ref, type_ref = ref.get("subfolder") or "", ref.get("type") or "output"
    if not isinstance(subfolder_ref, str) or not isinstance(type_ref, str):
        raise ApiError(400, "invalid_upload", "'original_ref' subfolder and type must be strings", str(ref)[:200])
    original = resolve_user_file(state.runtime.folders, ref["filename"], type_ref, subfolder_ref)
    if not original.is_file():
        raise ApiError(404, "file_not_found", "The original image was not found", ref["filename"][:200])
    name = Path(sanitize_filename(form.filename)).with_suffix(".png").name
    folder, file_type, subfolder = _target_folder(state, form)
    loop = asyncio.get_running_loop()
    try:
        data = await loop.run_in_executor(None, _compose_mask, original, form.data, state.config.max_image_pixels)
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever PIL raises on a bad file is a 400, not a crash
        raise ApiError(400, "not_an_image", "The original image could not be decoded",
                       f"{type(exc).__name__}: {str(exc)[:200]}") from None
    final = await loop.run_in_executor(None, store_file, folder, name, data, _overwrite(form))
    return json_response({"name": final, "subfolder": subfolder, "type": file_type})


def routes() -> list[tuple[str, str, Any]]:
    return [("POST", "/upload/image", upload_image), ("POST", "/upload/mask", upload_mask)]
