"""IMAGE / MASK tensors <-> PIL, resizing and PNG files, shared by every node pack.

Conventions (ComfyUI's): IMAGE is float32 B×H×W×C in 0..1, MASK is float32 B×H×W in 0..1.
This module imports torch and PIL, so only node packs (never the engine core) import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np  # noqa: TID253 - the torch image layer (docstring)
import torch  # noqa: TID253 - the torch image layer (docstring)
import torch.nn.functional as F  # noqa: TID253 - the torch image layer (docstring)
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin  # noqa: TID253 - the torch image layer (docstring)

from engine.core.atomic_files import atomic_write

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")


# ----- tensor <-> PIL
def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One H×W×C (C = 1, 3 or 4) or H×W float image in 0..1 -> an 8-bit PIL image (L, RGB or RGBA).

    Levels are truncated, not rounded, as ComfyUI's SaveImage and previews do (float32 `255 * x`, clipped to
    0..255, cast to uint8): 0.999 is level 254, 0.5 is 127. NaN becomes 0.
    """
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an H×W×C image with 1, 3 or 4 channels, got shape {tuple(image.shape)}")
    return Image.fromarray(to_uint8(image.detach().float().cpu().numpy()))


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Float levels in 0..1 -> uint8 by ComfyUI's rule: clip(255 * x, 0, 255), truncated toward 0."""
    scaled = np.float32(255.0) * np.nan_to_num(np.asarray(array, dtype=np.float32), nan=0.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def pil_to_tensor(picture: Image.Image, mode: str = "RGB") -> torch.Tensor:
    """A PIL image -> float 1×H×W×C in 0..1 (C from `mode`: RGB 3, RGBA 4; L gives 1×H×W)."""
    array = np.asarray(picture.convert(mode), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).unsqueeze(0)


def pil_frames(picture: Image.Image) -> list[Image.Image]:
    """Every frame of a (possibly animated or multi-page) image, EXIF orientation applied.

    MPO files (stereo JPEGs from cameras) hold a second view, not an animation: only the first counts.
    """
    frames = []
    for frame in ImageSequence.Iterator(picture):
        frames.append(ImageOps.exif_transpose(frame).copy())
        if picture.format == "MPO":
            break
    return frames


def pil_to_rgb_and_alpha(picture: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A PIL frame -> (IMAGE 1×H×W×3, alpha H×W in 0..1 or None when the frame has no transparency).

    16-bit greyscale frames (modes I and I;16) are scaled from 0..65535, not clipped at 255.
    """
    if picture.mode in ("I", "I;16", "I;16B", "I;16L"):
        grey = np.asarray(picture, dtype=np.float32)
        scale = 65535.0 if grey.max(initial=0) > 255 or picture.mode.startswith("I;16") else 255.0
        grey = np.clip(grey / scale, 0.0, 1.0)
        return torch.from_numpy(np.repeat(grey[..., None], 3, axis=-1).copy()).unsqueeze(0), None
    alpha = None
    if "A" in picture.getbands():
        alpha = picture.getchannel("A")
    elif picture.mode == "P" and "transparency" in picture.info:
        alpha = picture.convert("RGBA").getchannel("A")
    rgb = pil_to_tensor(picture, "RGB")
    if alpha is None:
        return rgb, None
    return rgb, torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    """MASK B×H×W (or H×W) -> greyscale IMAGE B×H×W×3."""
    mask = as_mask_batch(mask)
    return mask.unsqueeze(-1).expand(*mask.shape, 3).clone()


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """Accept H×W or B×H×W masks (ComfyUI allows both) and return B×H×W."""
    if mask.ndim == 2:
        return mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[-1] == 1:  # B×H×W×1 from some custom nodes
        return mask[..., 0]
    if mask.ndim != 3:
        raise ValueError(f"expected a MASK of shape B×H×W or H×W, got shape {tuple(mask.shape)}")
    return mask


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Grow a batch to `batch` items by repeating it (a single mask applied to every image, say)."""
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] > batch:
        return tensor[:batch]
    repeats = -(-batch // tensor.shape[0])
    return tensor.repeat(repeats, *([1] * (tensor.ndim - 1)))[:batch]


# ----- resizing
def resize_images(images: torch.Tensor, width: int, height: int, method: str = "bilinear",
                  crop: str = "disabled") -> torch.Tensor:
    """Resize an IMAGE batch (B×H×W×C) to width×height.

    ComfyUI's `common_upscale`, value for value: `crop="center"` first cuts the source to the target's
    aspect ratio (ComfyUI's rounding of the margins), so nothing is stretched. nearest-exact, bilinear, area
    and bicubic are torch's interpolation (bicubic may overshoot 0..1, as in ComfyUI; saving clips it);
    lanczos goes through 8-bit PIL images as ComfyUI does (levels truncated, RGBA resized premultiplied),
    so it gives multiples of 1/255.
    """
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale method {method!r}; expected one of {list(UPSCALE_METHODS)}")
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {list(CROP_METHODS)}")
    if width < 1 or height < 1:
        raise ValueError(f"target size must be at least 1×1, got {width}×{height}")
    if crop == "center":
        images = center_crop_to_aspect(images, width / height)
    if images.shape[1] == height and images.shape[2] == width:
        return images.clone()
    if method == "lanczos":
        return _resize_lanczos(images, width, height)
    channels_first = images.movedim(-1, 1).float()
    resized = F.interpolate(channels_first, size=(height, width), mode=method)
    resized = resized.movedim(1, -1)
    return resized.contiguous()


def resize_masks(masks: torch.Tensor, width: int, height: int, method: str = "bilinear") -> torch.Tensor:
    """Resize a MASK batch (B×H×W) with the same methods as `resize_images`."""
    return resize_images(as_mask_batch(masks).unsqueeze(-1), width, height, method)[..., 0]


def center_crop_to_aspect(images: torch.Tensor, aspect: float) -> torch.Tensor:
    """Cut the middle of each B×H×W×C image to width/height = aspect, as ComfyUI's center crop does.

    The margin cut from each side is round((W - W × aspect / (W / H)) / 2) columns (or the same in rows),
    Python's rounding (halves to even), and the same margin goes on both sides.
    """
    height, width = images.shape[1], images.shape[2]
    old_aspect = width / height
    x = y = 0
    if old_aspect > aspect:
        x = min(round((width - width * (aspect / old_aspect)) / 2), (width - 1) // 2)
    elif old_aspect < aspect:
        y = min(round((height - height * (old_aspect / aspect)) / 2), (height - 1) // 2)
    return images[:, y:height - y, x:width - x]


def _resize_lanczos(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's lanczos: each image to 8 bits (truncated), PIL's LANCZOS resize, back to float / 255."""
    source = to_uint8(images.detach().float().cpu().numpy())
    channels = source.shape[3]
    out = np.empty((source.shape[0], height, width, channels), dtype=np.uint8)
    for b in range(source.shape[0]):
        if channels in (3, 4):
            out[b] = np.asarray(Image.fromarray(source[b]).resize((width, height), Image.Resampling.LANCZOS))
            continue
        for c in range(channels):  # masks and other channel counts: one greyscale image per channel
            channel = Image.fromarray(np.ascontiguousarray(source[b, :, :, c]))
            out[b, :, :, c] = np.asarray(channel.resize((width, height), Image.Resampling.LANCZOS))
    return torch.from_numpy(out.astype(np.float32) / 255.0).to(images.device)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


# ----- PNG files
def png_info(text_chunks: Mapping[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in text_chunks.items():
        info.add_text(key, value)
    return info


def save_png_atomic(picture: Image.Image, path: Path, text_chunks: Mapping[str, str] | None = None,
                    compress_level: int = 4) -> Path:
    """Write a PNG so that readers never see half a file (engine.core.atomic_files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as stream:
        picture.save(stream, format="PNG", pnginfo=png_info(text_chunks or {}), compress_level=compress_level)
    return path


def read_png_text(path: str | os.PathLike[str]) -> dict[str, str]:
    """The tEXt/iTXt chunks of a PNG file (where ComfyUI stores `prompt` and `workflow`)."""
    with Image.open(path) as picture:
        picture.load()
        if picture.format != "PNG":
            raise ValueError(f"{os.fspath(path)} is a {picture.format} file, not a PNG")
        return {str(key): str(value) for key, value in getattr(picture, "text", {}).items()}


def images_to_pils(images: torch.Tensor) -> Iterable[Image.Image]:
    for image in images:
        yield tensor_to_pil(image)
