"""Mask nodes: solid, invert, grow/shrink, feather, threshold, composite, and mask <-> image."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Boolean, Combo, Float, Int, Socket, node
from engine.core.types import IMAGE, MASK

from .options import MAX_RESOLUTION

IMAGE_CHANNELS = ("red", "green", "blue", "alpha")
MASK_OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")


def _v3_combo(name: str, choices: tuple[str, ...]):
    return Combo(name, choices, v3_combo=True, extra={"multiselect": False})


@node("SolidMask", category="mask",
      inputs=[Float("value", 1.0, min=0.0, max=1.0, step=0.01),
              Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("height", 512, min=1, max=MAX_RESOLUTION, step=1)],
      outputs=[MASK], description="A mask of one value.")
def solid_mask(ctx: Any, value: float, width: int, height: int):
    import torch

    return (torch.full((1, height, width), float(value), dtype=torch.float32),)


@node("InvertMask", category="mask", inputs=[Socket("mask", MASK)], outputs=[MASK], description="1 - mask.")
def invert_mask(ctx: Any, mask: Any):
    from engine.media.images import as_mask_batch  # noqa: PLC0415 - loads torch

    return (1.0 - as_mask_batch(mask),)


def grow(mask: Any, expand: int, tapered_corners: bool = True) -> Any:
    """Grey dilation (expand > 0) or erosion (expand < 0) by |expand| pixels.

    Each step takes the max (min) over a 3×3 neighbourhood: a cross with tapered corners, so the grown
    shape is a diamond, otherwise the full square. Pixels beyond the border do not take part.
    """
    import torch
    import torch.nn.functional as F

    from engine.media.images import as_mask_batch  # noqa: PLC0415 - loads torch

    mask = as_mask_batch(mask).float()
    if expand == 0:
        return mask.clone()
    sign = 1.0 if expand > 0 else -1.0
    grid = (mask * sign).unsqueeze(1)  # max-dilating -mask is eroding mask
    # Beyond height + width steps every pixel already holds the global max: stop there.
    steps = min(abs(int(expand)), grid.shape[-2] + grid.shape[-1])
    if not tapered_corners:  # k square steps = one (2k+1)-wide max, done separably (rows, then columns)
        grid = F.max_pool2d(grid, kernel_size=(1, 2 * steps + 1), stride=1, padding=(0, steps))
        grid = F.max_pool2d(grid, kernel_size=(2 * steps + 1, 1), stride=1, padding=(steps, 0))
        return (grid[:, 0] * sign).contiguous()
    for _ in range(steps):  # cross step: each pixel takes the max of itself and its 4 neighbours
        grown = grid.clone()
        torch.maximum(grown[..., 1:, :], grid[..., :-1, :], out=grown[..., 1:, :])
        torch.maximum(grown[..., :-1, :], grid[..., 1:, :], out=grown[..., :-1, :])
        torch.maximum(grown[..., :, 1:], grid[..., :, :-1], out=grown[..., :, 1:])
        torch.maximum(grown[..., :, :-1], grid[..., :, 1:], out=grown[..., :, :-1])
        grid = grown
    return (grid[:, 0] * sign).contiguous()


@node("GrowMask", category="mask", display_name="Grow Mask",
      inputs=[Socket("mask", MASK), Int("expand", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
              Boolean("tapered_corners", True)],
      outputs=[MASK], description="Grows (expand > 0) or shrinks (expand < 0) the mask by that many pixels.")
def grow_mask(ctx: Any, mask: Any, expand: int, tapered_corners: bool):
    return (grow(mask, expand, tapered_corners),)


def _ramp(size: int) -> Any:
    """(i + 1) / size for i < size: the factors of one feathered edge, from the outermost line inwards.

    Each factor is worked out in double precision and applied to the float32 mask, as ComfyUI does.
    """
    import torch

    return torch.tensor([(i + 1) / size for i in range(size)], dtype=torch.float64).float()


def far_edge_lines(length: int, size: int) -> list[int]:
    """The lines ComfyUI's FeatherMask (0.8.0) scales by (i + 1) / size on the right (or bottom) side.

    It counts the i-th factor at index -i: the first one lands on line 0 (Python's -0 is 0: the *left*
    or top line), the others on the lines length - i. So the far ramp starts one line inwards (the last
    line gets 2 / size, the line `size - 1` from the edge is never scaled) and line 0 is scaled by 1 / size.
    """
    size = min(size, length)
    return [(length - i) % length for i in range(size)]


def feather(mask: Any, left: int, top: int, right: int, bottom: int) -> Any:
    """ComfyUI's FeatherMask: the left, right, top and bottom ramps applied one after another, in place.

    Each edge width is first capped at the mask's size. The left and top ramps scale line i (from the edge)
    by (i + 1) / width; the right and bottom ramps are ComfyUI's, see `far_edge_lines`.
    """
    from engine.media.images import as_mask_batch  # noqa: PLC0415 - loads torch

    output = as_mask_batch(mask).float().clone()
    height, width = output.shape[1], output.shape[2]
    left, right = min(left, width), min(right, width)
    top, bottom = min(top, height), min(bottom, height)
    device = output.device
    if left:
        output[:, :, :left] *= _ramp(left).to(device)
    if right:
        output[:, :, far_edge_lines(width, right)] *= _ramp(right).to(device)
    if top:
        output[:, :top, :] *= _ramp(top).to(device)[:, None]
    if bottom:
        output[:, far_edge_lines(height, bottom), :] *= _ramp(bottom).to(device)[:, None]
    return output


@node("FeatherMask", category="mask",
      inputs=[Socket("mask", MASK)]
      + [Int(side, 0, min=0, max=MAX_RESOLUTION, step=1) for side in ("left", "top", "right", "bottom")],
      outputs=[MASK], description="Fades the mask linearly over the given width at each edge (ComfyUI's ramps).")
def feather_mask(ctx: Any, mask: Any, left: int, top: int, right: int, bottom: int):
    return (feather(mask, left, top, right, bottom),)


@node("ThresholdMask", category="mask",
      inputs=[Socket("mask", MASK), Float("value", 0.5, min=0.0, max=1.0, step=0.01)],
      outputs=[MASK], description="1 where the mask is above the value, else 0.")
def threshold_mask(ctx: Any, mask: Any, value: float):
    from engine.media.images import as_mask_batch  # noqa: PLC0415 - loads torch

    return ((as_mask_batch(mask) > value).float(),)


@node("MaskToImage", category="mask", display_name="Convert Mask to Image", inputs=[Socket("mask", MASK)],
      outputs=[IMAGE], description="A greyscale image of the mask.")
def mask_to_image_node(ctx: Any, mask: Any):
    from engine.media.images import mask_to_image  # noqa: PLC0415 - loads torch

    return (mask_to_image(mask),)


@node("ImageToMask", category="mask", display_name="Convert Image to Mask",
      inputs=[Socket("image", IMAGE), _v3_combo("channel", IMAGE_CHANNELS)],
      outputs=[MASK], description="One channel of the image as a mask.")
def image_to_mask(ctx: Any, image: Any, channel: str):
    index = IMAGE_CHANNELS.index(channel)
    if index >= image.shape[-1]:
        raise ValueError(f"ImageToMask: the image has {image.shape[-1]} channels, so it has no {channel} "
                         "channel (an RGB image has no alpha)")
    return (image[..., index].clone(),)


def combine_masks(destination: Any, source: Any, x: int, y: int, operation: str) -> Any:
    """Apply `operation` between the destination and the source placed at (x, y); result in 0..1."""
    from engine.media.images import as_mask_batch, repeat_to_batch  # noqa: PLC0415 - loads torch

    destination, source = as_mask_batch(destination).float(), as_mask_batch(source).float()
    batch = max(destination.shape[0], source.shape[0])
    output = repeat_to_batch(destination, batch).clone()
    source = repeat_to_batch(source.to(output.device), batch)
    bottom = min(y + source.shape[1], output.shape[1])
    right = min(x + source.shape[2], output.shape[2])
    if bottom <= y or right <= x:
        return output.clamp(0.0, 1.0)  # ComfyUI clamps the destination even when nothing overlaps
    region = output[:, y:bottom, x:right]
    placed = source[:, :bottom - y, :right - x]
    if operation == "multiply":
        combined = region * placed
    elif operation == "add":
        combined = region + placed
    elif operation == "subtract":
        combined = region - placed
    elif operation in ("and", "or", "xor"):
        left, right_bits = region.round().bool(), placed.round().bool()
        combined = {"and": left & right_bits, "or": left | right_bits, "xor": left ^ right_bits}[operation]
        combined = combined.float()
    else:
        raise ValueError(f"unknown mask operation {operation!r}; expected one of {list(MASK_OPERATIONS)}")
    output[:, y:bottom, x:right] = combined
    return output.clamp(0.0, 1.0)


@node("MaskComposite", category="mask",
      inputs=[Socket("destination", MASK), Socket("source", MASK),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=1), Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
              _v3_combo("operation", MASK_OPERATIONS)],
      outputs=[MASK], description="Combines source into destination at (x, y).")
def mask_composite(ctx: Any, destination: Any, source: Any, x: int, y: int, operation: str):
    return (combine_masks(destination, source, x, y, operation),)


NODES = [solid_mask, invert_mask, grow_mask, feather_mask, threshold_mask, mask_to_image_node, image_to_mask,
         mask_composite]
