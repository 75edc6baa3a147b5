"""The backend the server's config asks for (`--executor inprocess|ray`)."""

from __future__ import annotations

from typing import Any

from engine.backends.contract import Backend
from engine.backends.in_process import InProcessBackend
from engine.backends.ray.options import RayOptions  # no Ray: plain settings

EXECUTORS = ("inprocess", "ray")


def make_backend(runtime: Any, config: Any) -> Backend:
    """The backend `config.executor` names; Ray is imported only for "ray"."""
    executor = getattr(config, "executor", "inprocess") or "inprocess"
    preview_size = getattr(config, "preview_size", 512)
    preview_method = getattr(config, "preview_method", "auto")
    if executor == "inprocess":
        return InProcessBackend(runtime, preview_size, preview_method)
    if executor == "ray":
        from engine.backends.ray.backend import RayBackend  # noqa: PLC0415 - Ray is the optional extra

        return RayBackend(runtime, RayOptions.from_server_config(config), preview_size=preview_size,
                          preview_method=preview_method)
    raise ValueError(f"unknown executor {executor!r}; expected one of {list(EXECUTORS)}")
