"""Server settings, built from the command line (see `engine.server.add_serve_arguments`) or in tests."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024
DEFAULT_MAX_UPLOAD_MB = 50
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192  # decompression-bomb limit for uploads
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8188
    listen: list[str] = field(default_factory=list)  # extra bind addresses given with --listen
    auth_token: str | None = None
    cors_origin: str | None = None  # --enable-cors-header ORIGIN; None = no CORS headers at all
    allowed_hosts: list[str] = field(default_factory=list)  # extra Host names (--allow-host)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * MB
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_history: int = 10_000
    web_dir: Path = PROJECT_ROOT / "web"  # the builtin editor (at / unless frontend_dir, always at /fluxgraph/editor/)
    frontend_dir: Path | None = None  # --front-end comfyui / --front-end-root: this folder is served at / instead
    workflows_dir: Path = PROJECT_ROOT / "workflows"
    preview_size: int = 512  # --preview-size: a live preview's largest side
    preview_method: str = "auto"  # --preview-method none|auto|latent2rgb|taesd (engine.sampling.previews)
    executor: str = "inprocess"  # "ray": prompts run on Ray actors (engine/backends/ray, docs/scaleout.md)
    ray_address: str | None = None  # an existing Ray cluster; None starts a local instance on loopback
    workers: int | None = None  # Ray workers (default: one per GPU, or 1 on a CPU-only machine)
    ray_shared_storage: bool = False  # workers use the server's folders directly (same path on every machine)
    extra_model_paths: list[str] = field(default_factory=list)  # --extra-model-paths-config files, in order
    memory: Any = None  # engine.memory.budget.MemorySettings from --vram-budget/--lowvram/...; None: defaults

    @property
    def bind_addresses(self) -> list[str]:
        return self.listen or [self.host]

    @property
    def exposed(self) -> bool:
        """Whether the server listens beyond loopback (then IP-literal Host headers are accepted)."""
        return any(not is_loopback(address) for address in self.bind_addresses)


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
