"""What every worker does the same way, in-process or on a Ray actor: encode a preview, free its memory."""

from __future__ import annotations

import gc
import io
import sys
from typing import Any


def free_runtime(runtime: Any, unload_models: bool, free_memory: bool) -> None:
    """/free: unload models, and with free_memory also drop every cached output."""
    if free_memory:
        runtime.cache.clear()
    if unload_models or free_memory:
        models = getattr(runtime, "models", None)
        if models is not None and getattr(models, "loaded", True):  # never create a manager to empty it
            models.offload_all()
        gc.collect()
        torch = sys.modules.get("torch")  # only if something already loaded it
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")  # ComfyUI's --preview-method names


def run_preview_method(extra_data: dict | None, default: str) -> str:
    """The run's preview method: the prompt's `extra_data.preview_method` (ComfyUI's per-prompt override; an
    unknown value or ComfyUI's "default" means the server's), else the server's `--preview-method`."""
    asked = (extra_data or {}).get("preview_method")
    return asked if isinstance(asked, str) and asked in PREVIEW_METHODS else default


def encode_preview(preview: Any, max_size: int, method: str = "auto", folders: Any = None) -> tuple[bytes, str]:
    """A preview (PIL image, (format, PIL image) pair, IMAGE tensor, encoded bytes, or a sampler's latent
    preview, rendered by `method` with the decoders of `folders`) -> (JPEG bytes, format)."""
    render = getattr(preview, "render", None)
    if callable(render):  # engine.sampling.previews.LatentPreview: torch is loaded already
        preview = render(method, folders, max_size)
        if preview is None:
            raise ValueError(f"preview method {method!r} renders nothing")
    if isinstance(preview, (bytes, bytearray)):
        return bytes(preview), "JPEG"
    if isinstance(preview, tuple) and len(preview) >= 2:
        preview = preview[1]
    if hasattr(preview, "detach"):  # an IMAGE tensor: take the first image of the batch
        from engine.media.images import tensor_to_pil  # noqa: PLC0415 - imports torch; loaded already here

        tensor = preview[0] if preview.ndim == 4 else preview
        preview = tensor_to_pil(tensor)
    picture = preview.convert("RGB")
    picture.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), "JPEG"
