"""Files a client names (`filename`, `subfolder`, `type`): ComfyUI's name checks, then containment.

Used by /view, the uploads and /prompt's file inputs: an empty name, an absolute name, `..`, a control or
bidi-override character, a name the file system cannot hold (a part over 255 bytes, over 1024 characters in
all, more than 64 levels) -> 400; an unknown type -> 400; anything that resolves outside its root (through the
subfolder, the name or a symlink) -> 403; a path the file system cannot resolve (a symlink loop) -> 400.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from engine.core.folders import FILE_TYPES, UnsafePathError, contained_path, split_annotation
from engine.core.prompt_paths import UNSAFE_NAME_CHARACTERS
from engine.server.errors import ApiError

MAX_PART_BYTES = 255  # NAME_MAX of ext4, xfs, btrfs, NTFS (in UTF-16 units)
MAX_PATH_CHARS = 1024
MAX_PATH_LEVELS = 64


def check_relative_name(name: str, what: str) -> None:
    """ComfyUI's first line of defence, with its status codes: 400 for names that are plainly unsafe."""
    if not name:
        raise ApiError(400, "invalid_filename", f"Empty {what}", f"{what} must name a file")
    if "\x00" in name:
        raise ApiError(400, "invalid_filename", f"{what} contains a NUL byte", repr(name[:100]))
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ApiError(400, "invalid_filename", f"Absolute paths are not allowed in {what}", repr(name[:100]))
    parts = text.split("/")
    if ".." in parts:
        raise ApiError(400, "invalid_filename", f"'..' is not allowed in {what}", repr(name[:100]))
    if UNSAFE_NAME_CHARACTERS.search(name):
        raise ApiError(400, "invalid_filename", f"{what} contains a control or bidi-override character",
                       repr(name[:100]))
    if len(parts) > MAX_PATH_LEVELS:
        raise ApiError(400, "invalid_filename", f"{what} has more than {MAX_PATH_LEVELS} levels",
                       f"{len(parts)} levels")
    try:
        longest = max(len(part.encode("utf-8")) for part in parts)
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_filename", f"{what} is not valid UTF-8", repr(name[:100])) from None
    if longest > MAX_PART_BYTES:
        raise ApiError(400, "invalid_filename", f"A part of {what} is longer than {MAX_PART_BYTES} bytes",
                       f"{longest} bytes in {name[:100]!r}...")
    if len(name) > MAX_PATH_CHARS:
        raise ApiError(400, "invalid_filename", f"{what} is longer than {MAX_PATH_CHARS} characters",
                       f"{len(name)} characters")


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
    shown = (subfolder + "/" if subfolder else "") + filename
    folder = contained_or_error(root, subfolder, shown) if subfolder else root.resolve()
    return contained_or_error(folder, filename, shown)


def contained_or_error(root: Path, name: str, shown: str, leaves: str = "its folder") -> Path:
    """`contained_path(root, name)` in the server's error shape: 403 when it would leave `root` (through the
    name or a symlink), 400 when the file system cannot resolve it (a symlink loop); `shown` names it."""
    try:
        return contained_path(root, name)
    except UnsafePathError as exc:
        raise ApiError(403, "path_outside_folder", f"The path leaves {leaves}", str(exc)) from None
    except (OSError, RuntimeError) as exc:  # Python < 3.13 reports a symlink loop as RuntimeError
        reason = "a symlink loop" if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP \
            else (exc.strerror or type(exc).__name__)
        raise ApiError(400, "unresolvable_path", "The path cannot be resolved", f"{reason}: {shown!r:.200}") from None
