"""Content and listing digests of files and folders (stdlib only): upload de-duplication, image is_changed
hooks, training datasets' cache keys, the tiny zoo's manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20  # read in 1 MiB blocks: model-sized files never sit in memory whole


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_fingerprint(folder: str | Path) -> str:
    """Names, sizes and modification times of the folder's files (recursively): changes when a file is added,
    removed or edited, without reading any content."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"missing:{folder}"
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
