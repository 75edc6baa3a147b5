"""FLUX Kontext helpers: FluxKontextImageScale (references at the sizes Kontext was trained on)."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Socket, node
from engine.core.types import IMAGE

# (width, height) of the resolutions FLUX.1 Kontext was trained on (the FLUX Kontext release's list).
PREFERRED_KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """The preferred Kontext resolution whose aspect ratio is closest to width / height."""
    aspect = width / height
    _, best_w, best_h = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return best_w, best_h


@node("FluxKontextImageScale", category="advanced/conditioning/flux",
      inputs=[Socket("image", IMAGE)], outputs=[IMAGE],
      description="Resizes the image to the Kontext training resolution of the closest aspect ratio "
                  "(center crop to that aspect, then Lanczos).")
def flux_kontext_image_scale(ctx: Any, image: Any):
    from engine.media.images import resize_images  # noqa: PLC0415 - images loads torch on first use

    width, height = kontext_size(int(image.shape[2]), int(image.shape[1]))
    return (resize_images(image, width, height, "lanczos", "center"),)


NODES = [flux_kontext_image_scale]
