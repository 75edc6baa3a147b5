"""Files a client names (`filename`, `subfolder`, `type`): ComfyUI's name checks, then containment.

Used by /view, the uploads and /prompt's file inputs: an empty name, an absolute name or `..` -> 400; an
unknown type -> 400; anything that resolves outside its root (through the subfolder, the name or a
symlink) -> 403.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.folders import FILE_TYPES, UnsafePathError, contained_path, split_annotation
from engine.server.errors import ApiError


def check_relative_name(name: str, what: str) -> None:
    """ComfyUI's first line of defence, with its status codes: 400 for names that are plainly unsafe."""
    if not name:
        raise ApiError(400, "invalid_filename", f"Empty {what}", f"{what} must name a file")
    if "\x00" in name:
        raise ApiError(400, "invalid_filename", f"{what} contains a NUL byte", repr(name[:100]))
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ApiError(400, "invalid_filename", f"Absolute paths are not allowed in {what}", repr(name[:100]))
    if ".." in text.split("/"):
        raise ApiError(400, "invalid_filename", f"'..' is not allowed in {what}", repr(name[:100]))


def resolve_user_file(folders: Any, filename: str, file_type: str, subfolder: str) -> Path:
    """A file named by a client, inside input/, output/ or temp/ (403 when it would leave it)."""
    filename, file_type = split_annotation(filename, file_type)
    check_relative_name(filename, "filename")
    if subfolder:
        check_relative_name(subfolder, "subfolder")
    if file_type not in FILE_TYPES:
        raise ApiError(400, "invalid_type", "Unknown file type", f"type {file_type[:50]!r}; expected one of "
                       f"{list(FILE_TYPES)}")
    root = folders.directory(file_type)
    try:
        folder = contained_path(root, subfolder) if subfolder else root.resolve()
        return contained_path(folder, filename)
    except UnsafePathError as exc:
        raise ApiError(403, "path_outside_folder", "The path leaves its folder", str(exc)) from None
