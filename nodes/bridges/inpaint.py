"""MaskToInpaint: SEGMENTATION + classes -> an inpainting mask (grown, feathered), the same mask binarised on the
latent grid, and optionally the LATENT with that `noise_mask` (what SetLatentNoiseMask produces), for FLUX dev
inpainting; the pixel mask also suits FLUX Fill's mask input."""

from __future__ import annotations

import math
from typing import Any

from engine.core.schema import Combo, ExecutionBlocker, Float, Int, Output, Socket, String, node
from engine.core.types import LATENT, MASK, SEGMENTATION
from nodes.segmentation.labels import resolve_classes
from nodes.segmentation.morphology import morph
from nodes.segmentation.select import _class_choices, class_mask, requested_classes, validate_class_inputs


def feather(mask: Any, radius: int) -> Any:
    """Gaussian feathering over about `radius` pixels (σ = radius / 2), zero outside the image."""
    import torch

    if radius <= 0:
        return mask
    sigma = radius / 2
    half = int(math.ceil(2 * sigma))
    offsets = torch.arange(-half, half + 1, dtype=torch.float32, device=mask.device)
    kernel = torch.exp(-(offsets ** 2) / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    x = mask[:, None].float()
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, half))
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1), padding=(half, 0))
    return x[:, 0].clamp(0, 1)


def to_latent_grid(mask: Any, downscale: int, threshold: float) -> Any:
    """B×H×W -> B×(H//d)×(W//d): a latent cell is masked when any of its pixels reaches the threshold (so the
    sampler repaints every cell the mask touches); threshold 0 keeps the cell's mean coverage instead."""
    import torch.nn.functional as F

    h, w = (mask.shape[1] // downscale) * downscale, (mask.shape[2] // downscale) * downscale
    if h == 0 or w == 0:
        raise ValueError(f"MaskToInpaint: mask {tuple(mask.shape[1:])} is smaller than one latent cell "
                         f"({downscale} px)")
    x = mask[:, None, :h, :w].float()
    if threshold <= 0:
        return F.avg_pool2d(x, downscale)[:, 0]
    return (F.max_pool2d((x >= threshold).float(), downscale))[:, 0]


def inpaint_masks(segmentation: Any, class_ids: list[int], grow: int, feather_px: int, threshold: float,
                  downscale: int) -> tuple[Any, Any]:
    mask = class_mask(segmentation, class_ids, 0.0)
    if grow > 0:
        mask = morph(mask, "dilate", 2 * grow + 1, "disk")
    elif grow < 0:
        mask = morph(mask, "erode", 2 * -grow + 1, "disk")
    soft = feather(mask, feather_px)
    return soft, to_latent_grid(soft, downscale, threshold)


@node("MaskToInpaint", category="segmentation/bridges", display_name="Segmentation to Inpaint Mask",
      inputs=[Socket("segmentation", SEGMENTATION),
              Combo("class_name", _class_choices, default="sky"),
              String("more_classes", "", tooltip="More classes, comma-separated: names or class ids"),
              Int("grow", 8, min=-512, max=512, tooltip="Pixels to grow (negative: shrink) the mask by"),
              Int("feather", 8, min=0, max=512, tooltip="Soft edge width in pixels"),
              Float("threshold", 0.5, min=0.0, max=1.0, step=0.01,
                    tooltip="Binarise the latent-grid mask at this value (0: keep it soft)"),
              Int("latent_downscale", 8, min=1, max=64, tooltip="Pixels per latent cell (8 for FLUX's VAE)"),
              Socket("samples", LATENT, optional=True,
                     tooltip="Encoded image: returned with the latent-grid mask as its noise_mask")],
      outputs=[Output(MASK, "mask"), Output(MASK, "latent_mask"), Output(LATENT, "latent")],
      validate_inputs=validate_class_inputs,
      description="Turns chosen classes into an inpainting mask: grown and feathered at the image size (for "
                  "compositing and FLUX Fill), binarised on the latent grid (for SetLatentNoiseMask), and the "
                  "LATENT with that noise_mask when samples are connected.")
def mask_to_inpaint(ctx: Any, segmentation: Any, class_name: str, more_classes: str = "", grow: int = 8,
                    feather: int = 8, threshold: float = 0.5, latent_downscale: int = 8, samples: Any = None):
    entries = requested_classes(class_name, more_classes)
    if not entries:
        raise ValueError("MaskToInpaint: no class chosen (class_name is '(none)' and more_classes is empty)")
    ids = resolve_classes(entries, segmentation.names)
    soft, latent_mask = inpaint_masks(segmentation, ids, int(grow), int(feather), float(threshold),
                                      int(latent_downscale))
    if samples is None:
        return (soft, latent_mask, ExecutionBlocker("MaskToInpaint: connect 'samples' to get a LATENT"))
    latent_h, latent_w = samples["samples"].shape[-2:]
    if (latent_h, latent_w) != tuple(latent_mask.shape[1:]):
        raise ValueError(f"MaskToInpaint: samples are {latent_h}×{latent_w} latent cells but the image gives "
                         f"{tuple(latent_mask.shape[1:])} at 1/{latent_downscale}; encode the segmented image")
    latent = {**samples, "noise_mask": latent_mask[:, None]}
    return (soft, latent_mask, latent)


NODES = [mask_to_inpaint]
