"""The JSON header of a safetensors file, read with the stdlib only and size-limited.

Shared by model loading (engine/models/common/safetensors_io.py, which turns a `HeaderError` into a
`ModelFileError` naming the file) and the server's `/view_metadata` (which answers 404): one reader, one limit.
Layout: an 8-byte little-endian header length, then that many bytes of UTF-8 JSON, then the tensor data.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100 * 1024 * 1024  # real headers are kilobytes to a few MB; this bounds a hostile length


class HeaderError(ValueError):
    """Not a readable safetensors header. `head` holds the file's first bytes (to guess what it is instead)."""

    def __init__(self, problem: str, head: bytes = b"", truncated: bool = False):
        self.problem = problem
        self.head = head
        self.truncated = truncated
        super().__init__(problem)


@dataclass(frozen=True)
class Header:
    table: dict[str, Any]  # the parsed JSON object, `__metadata__` included
    length: int  # bytes of JSON after the 8-byte prefix
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.length

    @property
    def metadata(self) -> dict[str, Any]:
        meta = self.table.get("__metadata__")
        return meta if isinstance(meta, dict) else {}


def read_header(path: Path) -> Header:
    """Parse `path`'s safetensors header; HeaderError says what is wrong (too short, truncated, not JSON)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise HeaderError(f"only {size} bytes", head)
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or length < 2:
            raise HeaderError("its header length is implausible", head)
        if 8 + length > size:
            raise HeaderError(f"header needs {length} bytes but the file has {size - 8} after the length prefix "
                              "(incomplete download?)", head, truncated=True)
        raw = fh.read(length)
    try:
        table = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HeaderError("its header is not JSON", head) from None
    if not isinstance(table, dict):
        raise HeaderError("header is not a JSON object", head)
    return Header(table=table, length=length, file_size=size)
