"""How a recipe refuses a request: `RecipeError`, which the server answers with its 400 error shape."""

from __future__ import annotations

from typing import Any


class RecipeError(Exception):
    """A request no prompt can be built from. `kind` is the error type clients see ("invalid_request",
    "unknown_variant"), `details` names the input and what was wrong with it, `extra_info` adds fields
    (for an unknown variant: the installed and known ones)."""

    def __init__(self, message: str, details: str = "", kind: str = "invalid_request", **extra_info: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.kind = kind
        self.extra_info = extra_info
