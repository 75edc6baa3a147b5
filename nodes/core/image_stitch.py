"""ImageStitch: two images side by side (or stacked), optionally resized to match, with a spacer strip."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Boolean, Combo, Int, Socket, node
from engine.core.types import IMAGE

DIRECTIONS = ("right", "down", "left", "up")
SPACING_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0),
                  "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def _pad_to(image: Any, height: int, width: int) -> Any:
    """Center `image` on a black (transparent when it has alpha) canvas of height x width."""
    import torch

    batch, h, w, channels = image.shape
    if (h, w) == (height, width):
        return image
    canvas = torch.zeros(batch, height, width, channels, dtype=image.dtype)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[:, top:top + h, left:left + w] = image
    return canvas


def _grow_batch(image: Any, batch: int) -> Any:
    """A shorter batch is completed with copies of its last image, as ComfyUI's ImageStitch does."""
    import torch

    missing = batch - image.shape[0]
    return image if missing <= 0 else torch.cat([image, image[-1:].expand(missing, *image.shape[1:])])


def stitch(image1: Any, image2: Any, direction: str, match_image_size: bool, spacing_width: int,
           spacing_color: str) -> Any:
    """ComfyUI's ImageStitch, step for step: batches, size, padding, channels, then the spacer strip.

    With match_image_size, image2 is resized (lanczos) to image1's height (left/right) or width (up/down);
    its other side is int(h1 × w2 / h2) (or int(w1 / (w2 / h2))), truncated as ComfyUI does. An odd spacing
    width is rounded up to even.
    """
    import torch

    from engine.media.images import resize_images  # noqa: PLC0415 - loads torch

    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {list(DIRECTIONS)}")
    batch = max(image1.shape[0], image2.shape[0])
    first, second = _grow_batch(image1.float(), batch), _grow_batch(image2.float().to(image1.device), batch)
    horizontal = direction in ("left", "right")
    if match_image_size:
        (h1, w1), (h2, w2) = first.shape[1:3], second.shape[1:3]
        aspect = w2 / h2
        width, height = (max(1, int(h1 * aspect)), h1) if horizontal else (w1, max(1, int(w1 / aspect)))
        second = resize_images(second, width, height, "lanczos")
    elif horizontal:
        height = max(first.shape[1], second.shape[1])
        first, second = _pad_to(first, height, first.shape[2]), _pad_to(second, height, second.shape[2])
    else:
        width = max(first.shape[2], second.shape[2])
        first, second = _pad_to(first, first.shape[1], width), _pad_to(second, second.shape[1], width)
    channels = max(first.shape[-1], second.shape[-1])
    first, second = _with_channels(first, channels), _with_channels(second, channels)
    parts = [first, second] if direction in ("right", "down") else [second, first]
    if spacing_width > 0:
        spacing_width += spacing_width % 2
        color = torch.tensor((SPACING_COLORS[spacing_color] + (1.0,))[:channels], dtype=first.dtype)
        if horizontal:
            shape = (batch, max(first.shape[1], second.shape[1]), spacing_width)
        else:
            shape = (batch, spacing_width, max(first.shape[2], second.shape[2]))
        parts.insert(1, color.to(first.device).expand(*shape, channels).clone())
    return torch.cat(parts, dim=2 if horizontal else 1)


def _with_channels(image: Any, channels: int) -> Any:
    import torch

    if image.shape[-1] >= channels:
        return image
    alpha = torch.ones(*image.shape[:-1], channels - image.shape[-1], dtype=image.dtype, device=image.device)
    return torch.cat([image, alpha], dim=-1)


@node("ImageStitch", category="image/transform", display_name="Image Stitch",
      inputs=[Socket("image1", IMAGE), Combo("direction", DIRECTIONS, default="right", v3_combo=True,
                                             extra={"multiselect": False}),
              Boolean("match_image_size", True), Int("spacing_width", 0, min=0, max=1024, step=2),
              Combo("spacing_color", tuple(SPACING_COLORS), default="white", v3_combo=True,
                    extra={"multiselect": False}),
              Socket("image2", IMAGE, optional=True)],
      outputs=[IMAGE],
      description="Joins image2 to the right of, below, left of or above image1 (resized to match when "
                  "asked, else centered on black), with an optional spacer strip.")
def image_stitch(ctx: Any, image1: Any, direction: str, match_image_size: bool, spacing_width: int,
                 spacing_color: str, image2: Any = None):
    if image2 is None:
        return (image1,)
    return (stitch(image1, image2, direction, bool(match_image_size), int(spacing_width), spacing_color),)


NODES = [image_stitch]
