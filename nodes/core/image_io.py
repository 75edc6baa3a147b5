"""Image files in and out: LoadImage, LoadImageMask, SaveImage, PreviewImage, MaskPreview."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from engine.core.file_digest import file_sha256
from engine.core.folders import FolderPaths, UnsafePathError
from engine.core.schema import Combo, NodeResult, Socket, String, node
from engine.core.types import IMAGE, MASK

from .save_paths import save_target

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                              ".avif", ".apng", ".mpo", ".ppm", ".tga"})
MASK_CHANNELS = ("alpha", "red", "green", "blue")
SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_TEMP_SUFFIX_LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ----- choices and hooks shared by the two loaders
def input_images(folders: Any) -> list[str]:
    """Image files directly in input/, sorted (the LoadImage combo)."""
    if folders is None:
        return []
    return folders.list_input_files(IMAGE_EXTENSIONS)


def input_files(folders: Any) -> list[str]:
    """Every file directly in input/, sorted (the LoadImageMask combo: ComfyUI does not filter it)."""
    if folders is None:
        return []
    return folders.list_input_files()


def _require_folders(ctx: Any) -> FolderPaths:
    if getattr(ctx, "folders", None) is None:
        raise RuntimeError("this node needs the folder layout (input/output/temp); the runtime gave none")
    return ctx.folders


def _resolve_input(folders: FolderPaths, image: str) -> Path:
    """The file an `image` value names: in input/ unless it carries a ' [output]' or ' [temp]' suffix."""
    path = folders.resolve_file(image, "input")
    if not path.is_file():
        raise FileNotFoundError(f"image file {image!r} not found (looked for {path})")
    return path


def image_file_exists(image: str, folders: Any = None) -> bool | str:
    """validate_inputs hook: the named file exists (any file, not only those listed in the combo)."""
    if not isinstance(image, str) or not image:
        return f"Invalid image file: {image!r} (expected a file name)"
    if folders is None:  # no folder layout known at validation time: the node itself reports it
        return True
    try:
        path = folders.resolve_file(image, "input")
    except UnsafePathError as exc:
        return f"Invalid image file: {image} ({exc})"
    return True if path.is_file() else f"Invalid image file: {image}"


def image_file_hash(image: str, folders: Any = None, **_: Any) -> Any:
    """is_changed hook: the file's SHA-256, so editing the file re-runs the node; NaN (always re-run) when
    the file cannot be read."""
    if folders is None:
        return float("nan")
    try:
        return file_sha256(folders.resolve_file(image, "input"))
    except (OSError, UnsafePathError):
        return float("nan")


# ----- loaders
@node("LoadImage", category="image", display_name="Load Image",
      inputs=[Combo("image", input_images, extra={"image_upload": True})],
      outputs=[IMAGE, MASK], is_changed=image_file_hash, validate_inputs=image_file_exists,
      description="Loads an image from the input folder; the mask is 1 - alpha.")
def load_image(ctx: Any, image: str):
    import torch
    from PIL import Image

    from engine.media.images import pil_frames, pil_to_rgb_and_alpha  # noqa: PLC0415 - loads torch

    path = _resolve_input(_require_folders(ctx), image)
    with Image.open(path) as picture:
        frames = pil_frames(picture)
    images, alphas = [], []
    for frame in frames:
        rgb, alpha = pil_to_rgb_and_alpha(frame)
        if images and rgb.shape[1:3] != images[0].shape[1:3]:
            continue  # frames of another size cannot share the batch (ComfyUI skips them too)
        images.append(rgb)
        alphas.append(alpha)
    height, width = images[0].shape[1:3]
    if all(alpha is None for alpha in alphas):
        masks = torch.zeros((len(images), 64, 64), dtype=torch.float32)
    else:
        masks = torch.stack([1.0 - alpha if alpha is not None else torch.zeros((height, width))
                             for alpha in alphas])
    return torch.cat(images, dim=0), masks


@node("LoadImageMask", category="mask", display_name="Load Image (as Mask)",
      inputs=[Combo("image", input_files, extra={"image_upload": True}), Combo("channel", MASK_CHANNELS)],
      outputs=[MASK], is_changed=image_file_hash, validate_inputs=image_file_exists,
      description="Loads one channel of an image as a mask; the alpha channel is inverted (1 = transparent).")
def load_image_mask(ctx: Any, image: str, channel: str):
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    if channel not in MASK_CHANNELS:
        raise ValueError(f"channel must be one of {list(MASK_CHANNELS)}, got {channel!r}")
    path = _resolve_input(_require_folders(ctx), image)
    with Image.open(path) as picture:
        picture = ImageOps.exif_transpose(picture)
        if picture.mode.startswith("I"):
            picture = picture.point(lambda value: value * (1 / 255))
        rgba = picture.convert("RGBA")
    band = np.asarray(rgba.getchannel(channel[0].upper()), dtype=np.float32) / 255.0
    mask = torch.from_numpy(band.copy())
    if channel == "alpha":
        mask = 1.0 - mask
    return (mask.unsqueeze(0),)


# ----- writers
def png_text_chunks(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    """`prompt` plus one chunk per extra_pnginfo key (the editor's `workflow`), all as JSON text."""
    chunks: dict[str, str] = {}
    if prompt is not None:
        chunks["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            chunks[str(key)] = json.dumps(value)
    return chunks


def write_images(images: Any, root: Path, file_type: str, filename_prefix: str, prompt: Any,
                 extra_pnginfo: Any, compress_level: int) -> list[dict[str, str]]:
    """Write every image of the batch as a PNG under `root`; returns ComfyUI's ui image records."""
    from engine.media.images import save_png_atomic, tensor_to_pil  # noqa: PLC0415 - loads torch

    if images.ndim != 4:
        raise ValueError(f"expected an IMAGE batch of shape B×H×W×C, got shape {tuple(images.shape)}")
    target = save_target(root, filename_prefix, width=images.shape[2], height=images.shape[1])
    chunks = png_text_chunks(prompt, extra_pnginfo)
    records, counter = [], target.counter
    for batch_number, image in enumerate(images):
        filename = target.filename(counter, batch_number)
        while (target.folder / filename).exists():  # another writer took this counter meanwhile
            counter += 1
            filename = target.filename(counter, batch_number)
        save_png_atomic(tensor_to_pil(image), target.folder / filename, chunks, compress_level)
        records.append({"filename": filename, "subfolder": target.subfolder, "type": file_type})
        counter += 1
    return records


@node("SaveImage", category="image", display_name="Save Image", output_node=True, hidden=SAVE_HIDDEN,
      inputs=[Socket("images", IMAGE), String("filename_prefix", default="ComfyUI")],
      description="Saves the images to the output folder as PNG, with the workflow embedded.")
def save_image(ctx: Any, images: Any, filename_prefix: str = "ComfyUI", prompt: Any = None,
               extra_pnginfo: Any = None):
    folders = _require_folders(ctx)
    records = write_images(images, folders.output_dir, "output", filename_prefix, prompt, extra_pnginfo,
                           compress_level=4)
    return NodeResult(ui={"images": records})


def _temp_prefix() -> str:
    return "ComfyUI_temp_" + "".join(random.choice(_TEMP_SUFFIX_LETTERS) for _ in range(5))


@node("PreviewImage", category="image", display_name="Preview Image", output_node=True, hidden=SAVE_HIDDEN,
      inputs=[Socket("images", IMAGE)],
      description="Shows the images without keeping them: they go to the temp folder.")
def preview_image(ctx: Any, images: Any, prompt: Any = None, extra_pnginfo: Any = None):
    folders = _require_folders(ctx)
    records = write_images(images, folders.temp_dir, "temp", _temp_prefix(), prompt, extra_pnginfo,
                           compress_level=1)
    return NodeResult(ui={"images": records})


@node("MaskPreview", category="mask", display_name="Preview Mask", output_node=True, hidden=SAVE_HIDDEN,
      inputs=[Socket("mask", MASK)], description="Shows a mask as a greyscale image in the temp folder.")
def mask_preview(ctx: Any, mask: Any, prompt: Any = None, extra_pnginfo: Any = None):
    from engine.media.images import mask_to_image  # noqa: PLC0415 - loads torch

    folders = _require_folders(ctx)
    records = write_images(mask_to_image(mask), folders.temp_dir, "temp", _temp_prefix(), prompt,
                           extra_pnginfo, compress_level=1)
    return NodeResult(ui={"images": records})


NODES = [load_image, load_image_mask, save_image, preview_image, mask_preview]
