"""MaskRefineCRF: dense-CRF refinement of a mask, or of a segmentation's label map, against the image colours."""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.core.schema import ExecutionBlocker, Float, Int, Output, Socket, node
from engine.core.types import IMAGE, MASK, SEGMENTATION
from engine.memory.manager import default_device

from .crf import CRFParams, mean_field, soften

MAX_CLASSES = 32  # most frequent classes of an image that a label map refinement chooses between


def _rgb(image: Any) -> Any:
    channels = image.shape[-1]
    if channels == 1:
        return image.expand(*image.shape[:-1], 3)
    if channels in (3, 4):
        return image[..., :3]
    raise ValueError(f"MaskRefineCRF: image has {channels} channels; expected 1, 3 or 4")


def _at_working_size(probs: Any, image: Any, max_side: int) -> tuple[Any, Any, float]:
    import torch.nn.functional as F

    h, w = probs.shape[-2:]
    scale = 1.0 if max_side <= 0 or max(h, w) <= max_side else max_side / max(h, w)
    if scale == 1.0:
        return probs, image, 1.0
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small_probs = F.interpolate(probs[None], size=size, mode="area")[0]
    small_image = F.interpolate(image.permute(2, 0, 1)[None], size=size, mode="area")[0].permute(1, 2, 0)
    return small_probs, small_image, scale


def refine_probs(probs: Any, image: Any, params: Any, confidence: float, max_side: int) -> Any:
    """K×H×W probabilities + H×W×3 image -> refined K×H×W probabilities at the full size."""
    import torch.nn.functional as F

    probs = soften(probs, confidence)
    small_probs, small_image, scale = _at_working_size(probs, image, max_side)
    if scale != 1.0:
        params = dataclasses.replace(params, bilateral_sigma_xy=params.bilateral_sigma_xy * scale,
                                     smooth_sigma_xy=max(0.5, params.smooth_sigma_xy * scale))
    q = mean_field(small_probs, small_image, params)
    if scale != 1.0:
        q = F.interpolate(q[None], size=probs.shape[-2:], mode="bilinear", align_corners=False)[0]
    return q


def refine_mask(mask: Any, images: Any, params: Any, confidence: float, max_side: int) -> Any:
    import torch

    if mask.ndim == 2:
        mask = mask[None]
    if mask.shape[-2:] != images.shape[1:3]:
        raise ValueError(f"MaskRefineCRF: mask is {tuple(mask.shape[-2:])} but the image is "
                         f"{tuple(images.shape[1:3])}; resize the mask to the image first")
    if mask.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"MaskRefineCRF: {mask.shape[0]} masks for {images.shape[0]} images")
    out = []
    for i in range(images.shape[0]):
        p = mask[min(i, mask.shape[0] - 1)].float().clamp(0, 1).to(images.device)
        q = refine_probs(torch.stack([1 - p, p]), images[i], params, confidence, max_side)
        out.append(q[1])
    return torch.stack(out)


def refine_labels(segmentation: Any, images: Any, params: Any, confidence: float, max_side: int) -> Any:
    import torch

    if segmentation.size != tuple(images.shape[1:3]) or segmentation.batch_size != images.shape[0]:
        raise ValueError(f"MaskRefineCRF: segmentation is {segmentation.batch_size}×{segmentation.size} but the "
                         f"image batch is {images.shape[0]}×{tuple(images.shape[1:3])}")
    maps = []
    for i in range(images.shape[0]):
        labels = segmentation.label_map[i]
        ids, counts = torch.unique(labels, return_counts=True)
        ids = ids[counts.argsort(descending=True)][:MAX_CLASSES].tolist()
        if len(ids) < 2:
            maps.append(labels)
            continue
        single = dataclasses.replace(segmentation, label_map=segmentation.label_map[i:i + 1],
                                     class_logits=segmentation.class_logits[i:i + 1],
                                     mask_logits=segmentation.mask_logits[i:i + 1])
        scores = single.scores(ids)[0].clamp_min(0)
        probs = scores / scores.sum(dim=0, keepdim=True).clamp_min(1e-8)
        q = refine_probs(probs, images[i], params, confidence, max_side)
        maps.append(torch.as_tensor(ids)[q.argmax(dim=0)])
    return dataclasses.replace(segmentation, label_map=torch.stack(maps))


@node("MaskRefineCRF", category="segmentation", display_name="Refine Mask (dense CRF)",
      inputs=[Socket("image", IMAGE), Socket("mask", MASK, optional=True),
              Socket("segmentation", SEGMENTATION, optional=True),
              Int("iterations", 5, min=1, max=50),
              Float("bilateral_sigma_xy", 80.0, min=1.0, max=1000.0, step=1.0,
                    tooltip="Reach of the colour-aware kernel, in pixels"),
              Float("bilateral_sigma_rgb", 13.0, min=1.0, max=255.0, step=0.5,
                    tooltip="Colour difference (0..255 scale) the colour-aware kernel tolerates"),
              Float("bilateral_weight", 10.0, min=0.0, max=100.0, step=0.5),
              Float("smooth_sigma_xy", 3.0, min=0.5, max=50.0, step=0.5),
              Float("smooth_weight", 3.0, min=0.0, max=100.0, step=0.5),
              Float("confidence", 0.8, min=0.5, max=0.999, step=0.01,
                    tooltip="How much the input labels are trusted against the image colours"),
              Int("max_side", 256, min=0, max=8192,
                  tooltip="Run the CRF on an image at most this large, then upsample (0: full size)")],
      outputs=[Output(MASK), Output(SEGMENTATION)],
      description="Snaps a mask (or a label map) to the image's edges with a fully connected CRF. Connect "
                  "either a mask or a segmentation; the other output is blocked.")
def mask_refine_crf(ctx: Any, image: Any, mask: Any = None, segmentation: Any = None, iterations: int = 5,
                    bilateral_sigma_xy: float = 80.0, bilateral_sigma_rgb: float = 13.0,
                    bilateral_weight: float = 10.0, smooth_sigma_xy: float = 3.0, smooth_weight: float = 3.0,
                    confidence: float = 0.8, max_side: int = 256):
    if (mask is None) == (segmentation is None):
        raise ValueError("MaskRefineCRF: connect exactly one of 'mask' or 'segmentation'")
    if image.ndim != 4:
        raise ValueError(f"MaskRefineCRF: IMAGE must be B×H×W×C, got shape {tuple(image.shape)}")
    params = CRFParams(int(iterations), float(bilateral_sigma_xy), float(bilateral_sigma_rgb),
                       float(bilateral_weight), float(smooth_sigma_xy), float(smooth_weight))
    images = _rgb(image).float().to(default_device())
    if mask is not None:
        refined = refine_mask(mask, images, params, float(confidence), int(max_side)).cpu()
        return (refined, ExecutionBlocker("MaskRefineCRF: a mask was refined, not a segmentation"))
    refined = refine_labels(segmentation, images.cpu(), params, float(confidence), int(max_side))
    return (ExecutionBlocker("MaskRefineCRF: a segmentation was refined, not a mask"), refined)


NODES = [mask_refine_crf]
