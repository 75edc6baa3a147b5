"""Control-image preprocessors: Canny edges (kornia, as ComfyUI's Canny node) and Depth Anything V2 depth maps.

Canny: kornia's `canny` on the RGB image (kornia converts it to grey), thresholds as given, the binary edge
map repeated to 3 channels. Depth: transformers' DPT image processor (8-bit image, resized keeping its
aspect so that the short side is `resolution` rounded to a multiple of 14, bicubic; ImageNet normalisation),
DepthAnythingForDepthEstimation, the processor's post-processing back to the image size (bicubic), then each
depth map min-max normalised to 0..1 (near = bright) and repeated to 3 channels, as ComfyUI's preprocessor
nodes hand it to a ControlNet or a Depth model. transformers' depth-estimation pipeline does the same up to
its 8-bit rounding (it truncates).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from kornia.filters import canny as kornia_canny


def _check_image(image: Any, what: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"{what}: image must be an IMAGE [batch, height, width, 3]")
    return image[..., :3].float()


@torch.no_grad()
def canny_edges(image: Any, low_threshold: float, high_threshold: float) -> torch.Tensor:
    """Canny: the edge map of each image as a 3-channel IMAGE of 0 / 1."""
    pixels = _check_image(image, "Canny")
    if low_threshold > high_threshold:
        raise ValueError(f"Canny: low_threshold {low_threshold} is above high_threshold {high_threshold}")
    _, edges = kornia_canny(pixels.movedim(-1, 1), low_threshold, high_threshold)
    return edges.repeat(1, 3, 1, 1).movedim(1, -1).contiguous()


@functools.lru_cache(maxsize=8)
def _processor(resolution: int, settings: tuple) -> Any:
    from transformers import DPTImageProcessor  # noqa: PLC0415 - transformers takes seconds to import

    return DPTImageProcessor(size={"height": resolution, "width": resolution}, do_pad=False, do_rescale=True,
                             rescale_factor=1 / 255, do_normalize=True, **dict(settings))


def depth_processor(depth: Any, resolution: int) -> Any:
    """The DPT image processor of a DepthModel at `resolution`."""
    settings = {k: (tuple(v) if isinstance(v, list) else v) for k, v in depth.processor.items()}
    return _processor(int(resolution), tuple(sorted(settings.items())))


@torch.no_grad()
def estimate_depth(depth: Any, image: Any, resolution: int, memory: Any) -> torch.Tensor:
    """DepthAnythingV2Preprocessor: a 3-channel depth IMAGE of each image's size (module docstring)."""
    pixels = _check_image(image, "DepthAnythingV2Preprocessor")
    processor = depth_processor(depth, resolution)
    height, width = pixels.shape[1], pixels.shape[2]
    eight_bit = (pixels * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    model = depth.model
    maps = []
    with memory.use(model):
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        for item in eight_bit:
            inputs = processor(images=np.ascontiguousarray(item), return_tensors="pt")
            outputs = model(pixel_values=inputs["pixel_values"].to(device, dtype))
            outputs.predicted_depth = outputs.predicted_depth.float().cpu()
            (post,) = processor.post_process_depth_estimation(outputs, target_sizes=[(height, width)])
            maps.append(normalise_depth(post["predicted_depth"]))
    return torch.stack(maps)[..., None].repeat(1, 1, 1, 3)


def normalise_depth(predicted: torch.Tensor) -> torch.Tensor:
    """A depth map min-max scaled to 0..1 (a flat map gives zeros)."""
    low, high = predicted.min(), predicted.max()
    span = high - low
    return (predicted - low) / span if float(span) > 0 else torch.zeros_like(predicted)
