"""Checks on STRING literals that validation applies to every node (engine/core/validate.py), hooks or not.

- Length: a multiline STRING (prompt text) holds at most `FLUXGRAPH_MAX_TEXT_LENGTH` characters (default
  1,000,000), any other STRING at most `FLUXGRAPH_MAX_LINE_LENGTH` (default 65,536). A 20 MB prompt once took
  4 GB in the tokenizer; now it is refused before it is queued.
- File names: a STRING that names a file (`filename_prefix`, `*_name`, `*_path`, `*filename`: see
  `engine/core/prompt_paths.py`) may not hold control characters (CR, LF, NUL...) or bidi overrides.

Each refusal is `(type, message, details, extra_info)` for a ComfyUI-shaped node error naming the input.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from engine.core.prompt_paths import path_kind, unsafe_character
from engine.core.schema import Input

log = logging.getLogger(__name__)
MAX_TEXT_ENV = "FLUXGRAPH_MAX_TEXT_LENGTH"
MAX_LINE_ENV = "FLUXGRAPH_MAX_LINE_LENGTH"
DEFAULT_MAX_TEXT = 1_000_000
DEFAULT_MAX_LINE = 65_536
_warned: set[str] = set()


def _limit(env: str, default: int) -> int:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
        if value < 1:
            raise ValueError
    except ValueError:
        if env not in _warned:
            _warned.add(env)
            log.warning("%s=%r is not a positive integer; using %d", env, raw[:50], default)
        return default
    return value


def max_length(inp: Input) -> tuple[int, str]:
    """(the most characters this STRING input accepts, the environment variable that sets it)."""
    if inp.multiline:
        return _limit(MAX_TEXT_ENV, DEFAULT_MAX_TEXT), MAX_TEXT_ENV
    return _limit(MAX_LINE_ENV, DEFAULT_MAX_LINE), MAX_LINE_ENV


def string_refusal(inp: Input, value: str) -> tuple[str, str, str, dict[str, Any]] | None:
    """Why validation refuses this STRING literal, or None."""
    limit, env = max_length(inp)
    if len(value) > limit:
        return ("value_too_long", f"Value of '{inp.name}' longer than the max of {limit} characters",
                f"{inp.name}: {len(value)} characters; the limit is {limit} (set {env} to change it)",
                {"received_length": len(value), "max_length": limit})
    if path_kind(inp) in ("prefix", "name"):
        where = unsafe_character(value)
        if where is not None:
            return ("invalid_filename", f"'{inp.name}' contains a control or bidi-override character",
                    f"{inp.name}: {value[:100]!r} has {where}; file names cannot hold line breaks, other "
                    "control characters or bidi overrides", {"received_value": value[:200]})
    return None
