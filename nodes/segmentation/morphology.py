"""MaskMorphology: erode, dilate, open, close (kornia, on the mask's device), fill holes and drop small components
(scipy.ndimage connected components, on the CPU)."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Boolean, Combo, Int, Output, Socket, node
from engine.core.types import MASK

OPERATIONS = ["none", "dilate", "erode", "open", "close"]
KERNEL_SHAPES = ["disk", "square"]


def structuring_element(size: int, shape: str, device: Any) -> Any:
    import torch

    if size < 1:
        raise ValueError(f"kernel size must be at least 1, got {size}")
    if shape == "square":
        return torch.ones(size, size, device=device)
    if shape == "disk":
        centre = (size - 1) / 2
        ys, xs = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device),
                                indexing="ij")
        radius = size / 2
        return (((ys - centre) ** 2 + (xs - centre) ** 2) <= radius * radius).float()
    raise ValueError(f"kernel shape {shape!r} is not one of {KERNEL_SHAPES}")


def morph(mask: Any, operation: str, size: int, shape: str = "disk") -> Any:
    """Grey-scale morphology of a B×H×W mask with a flat structuring element (a binary mask stays binary).
    Outside the image counts as empty for dilation and as full for erosion, so borders neither grow nor eat."""
    import kornia.morphology as km

    if operation == "none" or size <= 1:
        return mask
    kernel = structuring_element(size, shape, mask.device)
    x = mask[:, None].float()
    # "shift" is exact and needs O(image) memory; "unfold" would allocate k² copies of the image.
    ops = {"dilate": km.dilation, "erode": km.erosion, "open": km.opening, "close": km.closing}
    if operation not in ops:
        raise ValueError(f"operation {operation!r} is not one of {OPERATIONS}")
    return ops[operation](x, kernel, engine="shift", border_type="geodesic")[:, 0]


def fill_mask_holes(mask: Any, threshold: float = 0.5) -> Any:
    """Set to 1 the background regions that do not touch the image border (per image, 4-connected)."""
    import numpy as np
    import torch
    from scipy import ndimage

    binary = (mask > threshold).cpu().numpy()
    filled = np.stack([ndimage.binary_fill_holes(m) for m in binary])
    holes = torch.from_numpy(filled & ~binary).to(mask.device)
    return torch.where(holes, torch.ones_like(mask), mask)


def remove_small_components(mask: Any, min_pixels: int, threshold: float = 0.5) -> Any:
    """Zero the 8-connected foreground components smaller than `min_pixels` (per image)."""
    import numpy as np
    import torch
    from scipy import ndimage

    if min_pixels <= 1:
        return mask
    binary = (mask > threshold).cpu().numpy()
    keep = np.zeros_like(binary)
    for i, m in enumerate(binary):
        labels, count = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
        if count:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            keep[i] = (sizes >= min_pixels)[labels]
    drop = torch.from_numpy(binary & ~keep).to(mask.device)
    return torch.where(drop, torch.zeros_like(mask), mask)


def check_mask(mask: Any, where: str) -> Any:
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"{where}: MASK must be B×H×W, got shape {tuple(mask.shape)}")
    if mask.shape[1] == 0 or mask.shape[2] == 0:
        raise ValueError(f"{where}: MASK is empty (shape {tuple(mask.shape)})")
    return mask.float()


@node("MaskMorphology", category="mask", display_name="Mask Morphology",
      inputs=[Socket("mask", MASK), Combo("operation", OPERATIONS, default="close"),
              Int("kernel_size", 5, min=1, max=255, tooltip="Size of the structuring element in pixels"),
              Combo("kernel_shape", KERNEL_SHAPES, default="disk"),
              Boolean("fill_holes", False, tooltip="Fill enclosed background regions"),
              Int("min_component", 0, min=0, max=1 << 24,
                  tooltip="Remove foreground components smaller than this many pixels (0: keep all)")],
      outputs=[Output(MASK)],
      description="Erode, dilate, open or close a mask, then fill holes and drop small specks.")
def mask_morphology(ctx: Any, mask: Any, operation: str, kernel_size: int, kernel_shape: str = "disk",
                    fill_holes: bool = False, min_component: int = 0):
    out = morph(check_mask(mask, "MaskMorphology"), operation, int(kernel_size), kernel_shape)
    if fill_holes:
        out = fill_mask_holes(out)
    if min_component > 0:
        out = remove_small_components(out, int(min_component))
    return (out,)


NODES = [mask_morphology]
