"""Compact JSON for values that are not all JSON: node outputs may carry tuples, numpy scalars or arrays.

`dumps` never fails (history rows and HTTP answers must not fail on an odd `ui` entry). What JSON cannot hold
becomes its nearest JSON form:
- numpy/torch scalars -> the number; arrays and tensors of at most `ARRAY_LIST_LIMIT` elements -> nested
  lists; larger ones -> a short description such as "ndarray(shape=[1, 512, 512, 3], dtype=float32)"
  (a preview image must not bloat a queue row);
- sets -> sorted lists (in insertion order when they do not sort); tuples -> lists;
- bytes -> their UTF-8 text when short and valid, else "<N bytes>"; paths -> their text;
- dict keys JSON cannot hold -> their text; a reference cycle or nesting past `MAX_DEPTH` -> "...";
- anything else -> `str(value)`, or "<TypeName>" when even that fails.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

ARRAY_LIST_LIMIT = 256  # elements
BYTES_TEXT_LIMIT = 1024  # bytes shown as text up to this length
MAX_DEPTH = 64
_COMPACT = (",", ":")
_JSON_KEYS = (str, int, float, bool, type(None))


def dumps(value: Any) -> str:
    """Compact JSON of `value`; never raises (see the module docstring for what becomes what)."""
    try:
        return json.dumps(value, separators=_COMPACT, default=_fallback)
    except (TypeError, ValueError, RecursionError):
        # keys JSON cannot hold, reference cycles, deep nesting: rebuild the value as plain JSON first
        return json.dumps(_plain(value, frozenset(), 0), separators=_COMPACT)


def _fallback(value: Any) -> Any:
    """The JSON form of one value the json module cannot encode itself."""
    try:
        shape = getattr(value, "shape", None)
        if shape is not None and hasattr(value, "tolist"):
            return _array(value, tuple(shape))
        if hasattr(value, "item"):
            return value.item()
        if isinstance(value, (set, frozenset)):
            return _sorted(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return _bytes(bytes(value))
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return str(value)
    except Exception:  # noqa: BLE001 - any object may fail to describe itself; dumps must not
        return f"<{type(value).__name__}>"


def _array(value: Any, shape: tuple[int, ...]) -> Any:
    if math.prod(shape) <= ARRAY_LIST_LIMIT:
        return value.tolist()
    dtype = str(getattr(value, "dtype", "?")).removeprefix("torch.")
    return f"{type(value).__name__}(shape={list(shape)}, dtype={dtype})"


def _sorted(items: Any) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:
        return list(items)


def _bytes(data: bytes) -> str:
    if len(data) <= BYTES_TEXT_LIMIT:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return f"<{len(data)} bytes>"


def _plain(value: Any, parents: frozenset[int], depth: int) -> Any:
    """`value` rebuilt from JSON types only; `parents` are the ids of the containers above it (cycles)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if depth >= MAX_DEPTH or id(value) in parents:
        return "..."
    inner = parents | {id(value)}
    if isinstance(value, dict):
        return {_key(key): _plain(item, inner, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, inner, depth + 1) for item in value]
    converted = _fallback(value)
    if converted is value:
        return f"<{type(value).__name__}>"
    return _plain(converted, inner, depth + 1)


def _key(key: Any) -> Any:
    if isinstance(key, _JSON_KEYS):
        return key
    try:
        return str(key)
    except Exception:  # noqa: BLE001 - a key whose __str__ raises still gets a name
        return f"<{type(key).__name__}>"


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, as error messages say it ("a JSON string")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
