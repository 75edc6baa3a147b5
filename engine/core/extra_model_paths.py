"""ComfyUI's `extra_model_paths.yaml`: more folders to search for each model folder key (docs/protocol.md §8).

    a111:                              # a named section (any name)
        base_path: ~/stable-diffusion-webui/   # ~ and $VARS expanded; relative -> against the YAML's folder
        is_default: false              # true: these folders are searched before models/
        checkpoints: models/Stable-diffusion
        loras: |
            models/Lora
            models/LyCORIS            # several folders: one per line

Every key other than base_path / is_default is a folder key (legacy names such as `unet`, `clip` allowed);
its paths are relative to base_path (or to the YAML's folder when there is none).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

RESERVED = ("base_path", "is_default")


class ExtraModelPathsError(ValueError):
    """An extra_model_paths.yaml that cannot be used; the message names the file and the section."""


def _expand(text: str) -> str:
    return os.path.expandvars(os.path.expanduser(text.strip()))


def parse_extra_model_paths(config_path: str | os.PathLike[str]) -> list[tuple[str, Path, bool]]:
    """[(folder key, absolute folder, is_default)] in file order."""
    import yaml

    config_path = Path(config_path)
    try:
        data: Any = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExtraModelPathsError(f"{config_path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ExtraModelPathsError(f"{config_path}: invalid YAML: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ExtraModelPathsError(f"{config_path}: expected a mapping of named sections, got {type(data).__name__}")
    here = config_path.resolve().parent
    entries: list[tuple[str, Path, bool]] = []
    for section, body in data.items():
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ExtraModelPathsError(f"{config_path}: section {section!r} must be a mapping of folder keys")
        base = here
        if body.get("base_path") is not None:
            base = here / _expand(str(body["base_path"]))
        is_default = bool(body.get("is_default", False))
        for key, value in body.items():
            if key in RESERVED or value is None:
                continue
            if not isinstance(value, (str, int, float)):
                raise ExtraModelPathsError(f"{config_path}: section {section!r}, key {key!r}: expected a path or "
                                           f"newline-separated paths, got {type(value).__name__}")
            for line in str(value).splitlines():
                if line.strip():
                    entries.append((str(key), (base / _expand(line)).resolve(), is_default))
    return entries


def load_extra_model_paths(config_path: str | os.PathLike[str], folders: Any) -> list[tuple[str, Path]]:
    """Register every folder of `config_path` with `folders.add_model_dir`; returns what was added.

    Default sections' folders go before models/ in their listed order; others are appended after it.
    """
    entries = parse_extra_model_paths(config_path)
    defaults = [(k, p) for k, p, d in entries if d]
    for key, path in reversed(defaults):  # inserting each at the front keeps the listed order
        folders.add_model_dir(key, path, first=True)
    for key, path, is_default in entries:
        if not is_default:
            folders.add_model_dir(key, path)
    return [(key, path) for key, path, _ in entries]
