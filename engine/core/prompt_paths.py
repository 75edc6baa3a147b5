"""Every file name inside a prompt goes through the same containment check as /view (CVE-2026-56673).

ComfyUI's LoadImage accepted `../../secret.png` through /prompt because its own validation hook skips the
combo check. Here, before a prompt is queued, each literal that names a file is checked:
- upload-capable inputs (`image_upload`, LoadImage's image): resolved inside input/ (or output/ / temp/ with
  a ` [output]` annotation), symlinks included;
- `filename_prefix`: must stay inside output/;
- every combo value and STRING inputs named like files (`*_name`, `*_path`, `*filename`): no `..`, no
  absolute path, no NUL (model folders may legitimately be symlinks, so these are checked as text).
A prompt with any such name is refused as a whole, in ComfyUI's error shape.

`UNSAFE_NAME_CHARACTERS` (control characters and bidi overrides) are refused in every file name a client
gives: validation (engine/core/validate.py), SaveImage at run time, the server's /view and uploads.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Iterator

from engine.core.folders import UnsafePathError, contained_path
from engine.core.graph import parse_prompt, unwrap_literal
from engine.core.schema import Input
from engine.core.types import STRING

_UPLOAD_KEYS = ("image_upload", "audio_upload", "video_upload", "file_upload", "image_folder")
_FILE_LIKE_SUFFIXES = ("_name", "_path", "filename", "_file")
_TEXT_ROOT = PurePosixPath("/__fluxgraph_name_check__")
# C0/C1 controls (CR, LF, NUL...), DEL, and the invisible marks that reorder how a name displays
# ("invoice\u202egnp.exe" shows as "invoiceexe.png")
UNSAFE_NAME_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def unsafe_character(name: str) -> str | None:
    """A description of the first control or bidi-override character in `name` (None when there is none)."""
    match = UNSAFE_NAME_CHARACTERS.search(name)
    if match is None:
        return None
    return f"U+{ord(match.group()):04X} at position {match.start()}"


def path_kind(inp: Input) -> str | None:
    """How an input's value is checked: 'file', 'prefix', 'name' or None (not a file name)."""
    if any(inp.extra.get(key) for key in _UPLOAD_KEYS):
        return "file"
    if inp.name == "filename_prefix":
        return "prefix"
    if inp.is_combo:
        return "name"
    if inp.type == STRING and inp.name.lower().endswith(_FILE_LIKE_SUFFIXES):
        return "name"
    return None


def path_values(prompt: dict[str, Any], registry: Any, kind: str) -> Iterator[str]:
    """The string literals of every input whose `path_kind` is `kind`, node by node in prompt order."""
    for node in prompt.values():
        schema = registry.get(node.get("class_type")) if isinstance(node, dict) else None
        if schema is None:
            continue
        for inp in schema.inputs:
            value = unwrap_literal(node.get("inputs", {}).get(inp.name))
            if path_kind(inp) == kind and isinstance(value, str):
                yield value


def check_name(kind: str, value: str, folders: Any) -> str | None:
    """Why `value` is refused, or None when it stays inside its folder."""
    try:
        if kind == "file" and folders is not None:
            folders.resolve_file(value, "input")
        elif kind == "prefix" and folders is not None:
            contained_path(folders.output_dir, value or ".")
        else:
            _check_text(value)
    except UnsafePathError as exc:
        return str(exc)
    return None


def _check_text(value: str) -> None:
    """Lexical containment: what contained_path refuses before it looks at the disk."""
    if "\x00" in value:
        raise UnsafePathError("path contains a NUL byte")
    text = value.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise UnsafePathError(f"absolute paths are not allowed: {value!r}")
    if any(part == ".." for part in PurePosixPath(text).parts):
        raise UnsafePathError(f"'..' is not allowed in paths: {value!r}")


def unsafe_path_errors(prompt: Any, registry: Any, folders: Any) -> dict[str, Any]:
    """ComfyUI-shaped node_errors for every file name that escapes its folder ({} when all are safe)."""
    if not isinstance(prompt, dict):
        return {}
    errors: dict[str, list[dict[str, Any]]] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        schema = registry.get(node.get("class_type")) if isinstance(node.get("class_type"), str) else None
        if schema is None:
            continue
        for inp in schema.inputs:
            value = unwrap_literal(node["inputs"].get(inp.name))
            kind = path_kind(inp)
            if kind is None or not isinstance(value, str):
                continue
            reason = check_name(kind, value, folders)
            if reason is not None:
                errors.setdefault(str(node_id), []).append({
                    "type": "unsafe_path", "message": "File name escapes its folder",
                    "details": f"{inp.name}: {reason}",
                    "extra_info": {"input_name": inp.name, "received_value": value}})
    if not errors:
        return {}
    return _with_dependents(prompt, registry, errors)


def _with_dependents(prompt: dict[str, Any], registry: Any, errors: dict[str, list]) -> dict[str, Any]:
    try:
        graph = parse_prompt(prompt)
    except ValueError:
        graph = None
    node_errors: dict[str, Any] = {}
    for node_id, node_errs in errors.items():
        dependents: list[str] = []
        if graph is not None:
            for node in graph:
                schema = registry.get(node.class_type)
                if schema is not None and schema.output_node and node_id in graph.upstream([node.id]):
                    dependents.append(node.id)
        node_errors[node_id] = {"errors": node_errs, "dependent_outputs": dependents,
                                "class_type": prompt[node_id].get("class_type")}
    return node_errors
