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


def encode_preview(preview: Any, max_size: int) -> tuple[bytes, str]:
    """A preview (PIL image, (format, PIL image) pair, IMAGE tensor or encoded bytes) -> (JPEG bytes, format)."""
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
