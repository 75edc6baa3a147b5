"""Image nodes that need no model: scaling, inverting, compositing, padding, blank images, sizes."""

from __future__ import annotations

import math
from typing import Any

from engine.core.schema import Boolean, Combo, Float, Int, Output, Socket, node
from engine.core.types import IMAGE, INT, MASK

from .options import CROP_METHODS, MAX_RESOLUTION, UPSCALE_METHODS


@node("ImageScale", category="image/upscaling", display_name="Upscale Image",
      inputs=[Socket("image", IMAGE), Combo("upscale_method", UPSCALE_METHODS),
              Int("width", 512, min=0, max=MAX_RESOLUTION, step=1),
              Int("height", 512, min=0, max=MAX_RESOLUTION, step=1), Combo("crop", CROP_METHODS)],
      outputs=[IMAGE], description="Resizes to width×height; a size of 0 keeps the aspect ratio.")
def image_scale(ctx: Any, image: Any, upscale_method: str, width: int, height: int, crop: str):
    from engine.media.images import resize_images  # noqa: PLC0415 - loads torch

    if width == 0 and height == 0:
        return (image,)
    source_height, source_width = image.shape[1], image.shape[2]
    if width == 0:
        width = max(1, round(source_width * height / source_height))
    elif height == 0:
        height = max(1, round(source_height * width / source_width))
    return (resize_images(image, width, height, upscale_method, crop),)


@node("ImageScaleBy", category="image/upscaling", display_name="Upscale Image By",
      inputs=[Socket("image", IMAGE), Combo("upscale_method", UPSCALE_METHODS),
              Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01)],
      outputs=[IMAGE], description="Resizes by a factor.")
def image_scale_by(ctx: Any, image: Any, upscale_method: str, scale_by: float):
    from engine.media.images import resize_images, scaled_size  # noqa: PLC0415 - loads torch

    width, height = scaled_size(image.shape[2], image.shape[1], scale_by)
    return (resize_images(image, width, height, upscale_method),)


@node("ImageScaleToTotalPixels", category="image/upscaling",
      inputs=[Socket("image", IMAGE), Combo("upscale_method", UPSCALE_METHODS, v3_combo=True,
                                            extra={"multiselect": False}),
              Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01),
              Int("resolution_steps", 1, min=1, max=256)],
      outputs=[IMAGE],
      description="Resizes to about `megapixels` × 1024² pixels, keeping the aspect ratio; both sides are "
                  "rounded to a multiple of resolution_steps.")
def image_scale_to_total_pixels(ctx: Any, image: Any, upscale_method: str, megapixels: float,
                                resolution_steps: int = 1):
    from engine.media.images import resize_images  # noqa: PLC0415 - loads torch

    source_height, source_width = image.shape[1], image.shape[2]
    scale = math.sqrt(megapixels * 1024 * 1024 / (source_width * source_height))
    steps = max(1, int(resolution_steps))
    width = max(steps, round(source_width * scale / steps) * steps)
    height = max(steps, round(source_height * scale / steps) * steps)
    return (resize_images(image, width, height, upscale_method),)


@node("ImageInvert", category="image", display_name="Invert Image", inputs=[Socket("image", IMAGE)],
      outputs=[IMAGE], description="1 - image.")
def image_invert(ctx: Any, image: Any):
    return (1.0 - image,)


def _match_channels(destination: Any, source: Any) -> Any:
    """Make `source` carry as many channels as `destination` (drop alpha, or add an opaque one)."""
    import torch

    wanted, have = destination.shape[-1], source.shape[-1]
    if have == wanted:
        return source
    if have > wanted:
        return source[..., :wanted]
    padding = torch.ones((*source.shape[:-1], wanted - have), dtype=source.dtype, device=source.device)
    return torch.cat([source, padding], dim=-1)


def composite(destination: Any, source: Any, x: int, y: int, mask: Any = None,
              resize_source: bool = False) -> Any:
    """Paste `source` (B×h×w×C) onto `destination` (B×H×W×C) with its top-left corner at (x, y).

    The mask (MASK, resized to the source) weights the source; parts beyond the destination are cut off.
    A batch of one on either side is repeated to the other's size.
    """
    import torch

    from engine.media.images import as_mask_batch, repeat_to_batch, resize_images, resize_masks  # noqa: PLC0415 - loads torch

    source = _match_channels(destination, source.to(destination.device, destination.dtype))
    batch = max(destination.shape[0], source.shape[0])
    result = repeat_to_batch(destination, batch).clone()
    height, width = result.shape[1], result.shape[2]
    if resize_source:
        source = resize_images(source, width, height, "bilinear")
    source = repeat_to_batch(source, batch)
    visible_h, visible_w = min(source.shape[1], height - y), min(source.shape[2], width - x)
    if visible_h <= 0 or visible_w <= 0:
        return result
    if mask is None:
        weight = torch.ones_like(source[:, :visible_h, :visible_w])
    else:
        mask = resize_masks(as_mask_batch(mask).to(result.device, result.dtype), source.shape[2],
                            source.shape[1], "bilinear")
        weight = repeat_to_batch(mask, batch)[:, :visible_h, :visible_w].unsqueeze(-1)
    region = result[:, y:y + visible_h, x:x + visible_w]
    # ComfyUI's arithmetic, so values agree to the bit: mask * source + (1 - mask) * destination.
    result[:, y:y + visible_h, x:x + visible_w] = (weight * source[:, :visible_h, :visible_w]
                                                   + (torch.ones_like(weight) - weight) * region)
    return result


@node("ImageCompositeMasked", category="image",
      inputs=[Socket("destination", IMAGE), Socket("source", IMAGE),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=1), Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
              Boolean("resize_source", False), Socket("mask", MASK, optional=True)],
      outputs=[IMAGE], description="Pastes source onto destination at (x, y), weighted by the mask.")
def image_composite_masked(ctx: Any, destination: Any, source: Any, x: int, y: int, resize_source: bool,
                           mask: Any = None):
    return (composite(destination, source, x, y, mask, resize_source),)


def _color_channels(color: int) -> tuple[float, float, float]:
    return ((color >> 16) & 0xFF) / 255.0, ((color >> 8) & 0xFF) / 255.0, (color & 0xFF) / 255.0


@node("EmptyImage", category="image", display_name="EmptyImage",
      inputs=[Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("batch_size", 1, min=1, max=4096),
              Int("color", 0, min=0, max=0xFFFFFF, step=1, extra={"display": "color"})],
      outputs=[IMAGE], description="A batch of images of one colour (0xRRGGBB).")
def empty_image(ctx: Any, width: int, height: int, batch_size: int = 1, color: int = 0):
    import torch

    rgb = torch.tensor(_color_channels(int(color)), dtype=torch.float32)
    return (rgb.expand(batch_size, height, width, 3).clone(),)


def outpaint_mask(height: int, width: int, left: int, top: int, right: int, bottom: int,
                  feathering: int) -> Any:
    """The mask over the original area: 0 inside, ramping up to 1 within `feathering` of a padded side.

    A pixel at distance d (< feathering) from the nearest padded side gets ((feathering - d) / feathering)²;
    sides without padding do not count (their distance is the image's height or width). The distance to the
    bottom is height - row and to the right width - col, as in ComfyUI; the value is worked out in double
    precision and stored as float32, as ComfyUI does. With feathering 0, or too large, the area is all 0.
    """
    import torch

    if not (0 < feathering and feathering * 2 < height and feathering * 2 < width):
        return torch.zeros((height, width), dtype=torch.float32)
    rows = torch.arange(height, dtype=torch.float64).unsqueeze(1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float64).unsqueeze(0).expand(height, width)
    far_rows, far_cols = torch.full_like(rows, height), torch.full_like(cols, width)
    distances = torch.stack([rows if top else far_rows, height - rows if bottom else far_rows,
                             cols if left else far_cols, width - cols if right else far_cols])
    nearest = distances.min(dim=0).values
    ramp = (feathering - nearest) / feathering
    return torch.where(nearest < feathering, ramp * ramp, torch.zeros_like(ramp)).float()


@node("ImagePadForOutpaint", category="image", display_name="Pad Image for Outpainting",
      inputs=[Socket("image", IMAGE)]
      + [Int(side, 0, min=0, max=MAX_RESOLUTION, step=8) for side in ("left", "top", "right", "bottom")]
      + [Int("feathering", 40, min=0, max=MAX_RESOLUTION, step=1)],
      outputs=[IMAGE, MASK],
      description="Adds grey borders to outpaint into; the mask is 1 over the new area.")
def image_pad_for_outpaint(ctx: Any, image: Any, left: int, top: int, right: int, bottom: int,
                           feathering: int):
    import torch

    batch, height, width, channels = image.shape
    padded = torch.full((batch, height + top + bottom, width + left + right, channels), 0.5,
                        dtype=image.dtype, device=image.device)
    padded[:, top:top + height, left:left + width] = image
    mask = torch.ones((height + top + bottom, width + left + right), dtype=torch.float32)
    mask[top:top + height, left:left + width] = outpaint_mask(height, width, left, top, right, bottom,
                                                              feathering)
    return padded, mask.unsqueeze(0)


@node("GetImageSize", category="image", display_name="Get Image Size", hidden={"unique_id": "UNIQUE_ID"},
      inputs=[Socket("image", IMAGE)],
      outputs=[Output(INT, "width"), Output(INT, "height"), Output(INT, "batch_size")],
      description="Width, height and batch size of an image.")
def get_image_size(ctx: Any, image: Any, unique_id: Any = None):
    return int(image.shape[2]), int(image.shape[1]), int(image.shape[0])


NODES = [image_scale, image_scale_by, image_scale_to_total_pixels, image_invert, image_composite_masked,
         empty_image, image_pad_for_outpaint, get_image_size]
