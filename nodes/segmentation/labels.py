"""Class names: the ADE20K list shipped with the project, parsing of a class list, close-match suggestions."""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Sequence

LABELS_FILE = Path(__file__).resolve().parents[2] / "engine" / "models" / "common" / "configs" / "ade20k_labels.json"


@functools.lru_cache(maxsize=1)
def ade20k_names() -> tuple[str, ...]:
    return tuple(json.loads(LABELS_FILE.read_text()))


def split_class_list(text: str) -> list[str]:
    """'sky, tree,  12' -> ['sky', 'tree', '12'] (commas or new lines separate entries)."""
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def unknown_class_message(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=4, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return f"unknown class {name!r}{hint}"


def resolve_classes(entries: Sequence[str], names: Sequence[str]) -> list[int]:
    """Names (case-insensitive) or integer ids -> class ids; raises ValueError listing close matches."""
    lookup = {n.lower(): i for i, n in enumerate(names)}
    ids: list[int] = []
    problems: list[str] = []
    for entry in entries:
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if not 0 <= index < len(names):
                problems.append(f"class id {index} is out of range 0..{len(names) - 1}")
            elif index not in ids:
                ids.append(index)
        elif entry.lower() in lookup:
            if lookup[entry.lower()] not in ids:
                ids.append(lookup[entry.lower()])
        else:
            problems.append(unknown_class_message(entry, names))
    if problems:
        raise ValueError("; ".join(problems))
    return ids
