"""Compact JSON for values that are not all JSON: node outputs may carry tuples or numpy scalars."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON; values JSON cannot hold become their nearest JSON form or their text, never an error
    (history rows and HTTP answers must not fail on an odd `ui` entry)."""
    return json.dumps(value, separators=(",", ":"), default=_fallback)


def _fallback(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
