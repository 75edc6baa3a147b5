"""One error shape for every 4xx/5xx answer, and strict request-body parsing.

Every error body is `{"error": {"type", "message", "details", "extra_info"}}` (ComfyUI's /prompt shape; the
/prompt routes add `node_errors`). Handlers raise `ApiError`; the middleware in `app.py` turns it, aiohttp's
own HTTP errors (404, 405, 413) and unexpected exceptions into that shape, so no client ever has to parse an
HTML error page and a bad request can never take the server down.
"""

from __future__ import annotations

import json
import math
from typing import Any, Awaitable, Callable

from aiohttp import web

from engine.core.json_text import (
    dumps,  # noqa: F401  (re-exported: the routes import it from here)
    json_type,  # one wording of JSON types for every error message
)


CHUNK_BYTES = 256 * 1024  # size of each read of a streamed body


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, details: str = "",
                 node_errors: dict[str, Any] | None = None, **extra_info: Any) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.details = details
        self.node_errors = node_errors
        self.extra_info = extra_info

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": {"type": self.type, "message": self.message, "details": self.details,
                                          "extra_info": self.extra_info}}
        if self.node_errors is not None:
            body["node_errors"] = self.node_errors
        return body


def error_body(type_: str, message: str, details: str = "", **extra_info: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_limited(read_chunk: Callable[[int], Awaitable[bytes]], limit: int, too_large: ApiError) -> bytes:
    """Every chunk `read_chunk` gives, raising `too_large` as soon as they pass `limit` bytes (a chunked
    body has no Content-Length to check first, so the count is what holds the line)."""
    chunks, total = [], 0
    while chunk := await read_chunk(CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The request body, at most `limit` bytes (413 naming `what` otherwise, before reading when it says so)."""
    too_large = ApiError(413, "request_too_large", "Request body too large", f"{what} are limited to {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    return await read_limited(request.content.read, limit, too_large)


async def read_json(request: web.Request, *, allow_empty: bool = False, node_errors: bool = False,
                    limit: int | None = None, what: str = "request bodies") -> Any:
    """The request body as JSON. Refuses bodies that are not UTF-8 JSON, or hold NaN/Infinity, or (with
    `limit`) are larger than `limit` bytes."""
    raw = await (request.read() if limit is None else read_body(request, limit, what))
    extra = {"node_errors": {}} if node_errors else {}
    if not raw.strip():
        if allow_empty:
            return None
        raise ApiError(400, "invalid_json", "Request body is empty", "expected a JSON object", **extra)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_json", "Request body is not UTF-8 text", str(exc), **extra) from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "Request body is not valid JSON", str(exc)[:300], **extra) from None


async def read_json_object(request: web.Request, *, allow_empty: bool = False,
                           node_errors: bool = False) -> dict[str, Any]:
    body = await read_json(request, allow_empty=allow_empty, node_errors=node_errors)
    if body is None:
        return {}
    if not isinstance(body, dict):
        extra = {"node_errors": {}} if node_errors else {}
        raise ApiError(400, "invalid_request", "Request body must be a JSON object",
                       f"got a JSON {json_type(body)}", **extra)
    return body


def expect_bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, "invalid_request", f"'{key}' must be a boolean", f"got a JSON {json_type(value)}")
    return value


def expect_id_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "invalid_request", f"'{key}' must be a list of prompt id strings",
                       f"got {dumps(value)[:200]}")
    return value


MAX_QUERY_INT = 2**31 - 1  # far beyond any history size; SQLite and the queue never see a wider number


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    """A true/false (or 1/0) query parameter; 400 `invalid_query` naming it otherwise."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise ApiError(400, "invalid_query", f"Query parameter '{name}' must be true or false", f"got {raw[:50]!r}")


def query_int(request: web.Request, name: str, default: int | None = None, minimum: int = 0,
              maximum: int = MAX_QUERY_INT) -> int | None:
    """An integer query parameter within [minimum, maximum]; 400 `invalid_query` naming it otherwise."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_query", f"Query parameter '{name}' must be an integer",
                       f"got {raw[:100]!r}") from None
    if value < minimum:
        raise ApiError(400, "invalid_query", f"Query parameter '{name}' must be at least {minimum}",
                       f"got {raw[:100]}")
    if value > maximum:
        raise ApiError(400, "invalid_query", f"Query parameter '{name}' must be at most {maximum}",
                       f"got {raw[:100]}")
    return value


def finite_number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, "invalid_request", f"'{name}' must be a number", f"got {dumps(value)[:100]}",
                       node_errors={}) from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ApiError(400, "invalid_request", f"'{name}' must be a finite number", f"got {dumps(value)[:100]}",
                       node_errors={})
    return number
