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


def stitch(image1: Any, image2: Any, direction: str, match_image_size: bool, spacing_width: int,
           spacing_color: str) -> Any:
    import torch

    from engine.media.images import repeat_to_batch, resize_images  # noqa: PLC0415 - loads torch

    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {list(DIRECTIONS)}")
    batch = max(image1.shape[0], image2.shape[0])
    first, second = repeat_to_batch(image1.float(), batch), repeat_to_batch(image2.float().to(image1.device), batch)
    channels = max(first.shape[-1], second.shape[-1])
    first, second = (_with_channels(first, channels), _with_channels(second, channels))
    horizontal = direction in ("left", "right")
    if match_image_size:  # image2 takes image1's height (side by side) or width (stacked), aspect kept
        h2, w2 = second.shape[1], second.shape[2]
        if horizontal:
            size = (max(1, round(w2 * first.shape[1] / h2)), first.shape[1])
        else:
            size = (first.shape[2], max(1, round(h2 * first.shape[2] / w2)))
        second = resize_images(second, size[0], size[1], "lanczos")
    elif horizontal:
        height = max(first.shape[1], second.shape[1])
        first, second = _pad_to(first, height, first.shape[2]), _pad_to(second, height, second.shape[2])
    else:
        width = max(first.shape[2], second.shape[2])
        first, second = _pad_to(first, first.shape[1], width), _pad_to(second, second.shape[1], width)
    parts = [first, second] if direction in ("right", "down") else [second, first]
    if spacing_width > 0:
        color = torch.tensor(SPACING_COLORS[spacing_color] + (1.0,) * (channels - 3), dtype=first.dtype)
        shape = (batch, first.shape[1], spacing_width) if horizontal else (batch, spacing_width, first.shape[2])
        parts.insert(1, color.expand(*shape, channels).clone())
    return torch.cat(parts, dim=2 if horizontal else 1)


def _with_channels(image: Any, channels: int) -> Any:
    import torch

    if image.shape[-1] >= channels:
        return image
    alpha = torch.ones(*image.shape[:-1], channels - image.shape[-1], dtype=image.dtype)
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
