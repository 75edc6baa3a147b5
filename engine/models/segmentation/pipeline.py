"""Mask2Former semantic segmentation: images in, label maps at the original resolution out.

Pre- and post-processing reproduce transformers' `Mask2FormerImageProcessorPil` exactly (no torchvision):
- float images are rounded to uint8, resized with PIL's bilinear filter so that the short side hits the target
  (long side capped), then rounded up to a multiple of 32, as the processor does;
- rescale + normalise go through a 256-entry table per channel computed exactly as the processor computes them
  (float64 rescale, float32 normalise), so pixel values are bit-identical, and the table lookup runs on the GPU;
- `post_process_semantic_segmentation`: mask logits are resized to a fixed 384x384 grid, multiplied with the
  class probabilities (null class dropped), then each image's map is resized to its original size and argmax'd.

Batching: the model ignores `pixel_mask`, so padding changes what it sees. In "group" mode images are grouped by
processed size and each group runs as one batch (results equal single-image runs). In "pad" mode a mixed batch
is padded to its largest size and each result is cropped to its own region before post-processing (faster,
approximately equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from engine.models.segmentation.mask2former import Preprocessing, Segmenter

POSTPROCESS_GRID = (384, 384)  # transformers' post-processing resizes mask logits to this grid first
ARGMAX_CLASS_CHUNK = 32  # classes upsampled at once when taking the argmax at full resolution


# ----- sizes and pixels

def processed_size(height: int, width: int, prep: Preprocessing) -> tuple[int, int]:
    """The size the image processor resizes to: short side to `shortest_edge`, long side at most
    `longest_edge`, each side then rounded up to a multiple of `size_divisor`."""
    size, max_size = prep.shortest_edge, prep.longest_edge
    raw = None
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > max_size:
        raw = max_size * short / long
        size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        new_h, new_w = height, width
    elif width < height:
        new_w = size
        new_h = int((raw if raw is not None else size) * height / width)
    else:
        new_h = size
        new_w = int((raw if raw is not None else size) * width / height)
    d = prep.size_divisor
    return (int(math.ceil(new_h / d) * d), int(math.ceil(new_w / d) * d)) if d > 0 else (new_h, new_w)


def to_uint8_rgb(image: Any) -> Any:
    """One IMAGE (H×W×C float 0..1) to an H×W×3 uint8 tensor on the image's device: gray repeated, alpha
    dropped, values rounded (the processor would truncate, turning 0.2·255 = 50.99998 into 50)."""
    import torch

    if image.ndim != 3:
        raise ValueError(f"expected one image H×W×C, got shape {tuple(image.shape)}")
    channels = image.shape[-1]
    if channels == 1:
        image = image.expand(-1, -1, 3)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise ValueError(f"image has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    return torch.clamp(image.detach().float() * 255.0, 0, 255).round().to(torch.uint8)


def resize_uint8(pixels: Any, size: tuple[int, int]) -> Any:
    """H×W×3 uint8 (tensor or array) -> the processor's PIL bilinear resize, as a tensor (CPU when resized)."""
    import numpy as np
    import torch
    from PIL import Image

    height, width = size
    if tuple(pixels.shape[:2]) == (height, width):
        return pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.array(pixels))
    array = pixels.cpu().numpy() if isinstance(pixels, torch.Tensor) else pixels
    return torch.from_numpy(np.array(Image.fromarray(array).resize((width, height), resample=Image.BILINEAR)))


def normalisation_table(prep: Preprocessing) -> Any:
    """3×256 float32: value v of channel c -> (float32(v * (1/255) in float64) - mean_c) / std_c in float32."""
    import numpy as np

    rescaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(prep.image_mean, dtype=np.float32)[:, None]
    std = np.asarray(prep.image_std, dtype=np.float32)[:, None]
    return ((rescaled[None, :] - mean) / std).astype(np.float32)


def pixel_values(batch_uint8: Any, table: Any) -> Any:
    """B×H×W×3 uint8 tensor -> B×3×H×W normalised float32 on the table's device."""
    import torch

    indices = batch_uint8.to(table.device).long()
    channels = [table[c][indices[..., c]] for c in range(3)]
    return torch.stack(channels, dim=1)


# ----- post-processing

def semantic_scores(class_logits: Any, mask_logits: Any) -> Any:
    """One image: Q×(C+1) class logits and Q×h×w mask logits -> C×384×384 class scores (transformers' recipe)."""
    import torch

    masks = torch.nn.functional.interpolate(mask_logits[None].float(), size=POSTPROCESS_GRID, mode="bilinear",
                                            align_corners=False)[0]
    classes = class_logits.float().softmax(dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", classes, masks.sigmoid())


def upsample_scores(scores: Any, size: tuple[int, int]) -> Any:
    import torch

    return torch.nn.functional.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]


def label_map(scores: Any, size: tuple[int, int]) -> Any:
    """argmax over classes of the scores resized to `size`, a few classes at a time (a 150×H×W float tensor at
    full resolution would need gigabytes); ties go to the lower class id, as with a single argmax."""
    import torch

    best_value = best_index = None
    for start in range(0, scores.shape[0], ARGMAX_CLASS_CHUNK):
        chunk = upsample_scores(scores[start:start + ARGMAX_CLASS_CHUNK], size)
        value, index = chunk.max(dim=0)
        index = index + start
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index, best_index)
    return best_index


# ----- the SEGMENTATION value

@dataclass(frozen=True, eq=False)
class Segmentation:
    """Result for one IMAGE batch (all images the same size): label map, names, and what per-class scores at the
    original resolution are computed from (kept at the model's resolution to stay small)."""

    label_map: Any  # B×H×W int64, class ids at the original resolution, CPU
    class_logits: Any  # B×Q×(C+1) float32, CPU
    mask_logits: Any  # B×Q×h×w float32 (each image's own region at 1/4 of the processed size), CPU
    names: tuple[str, ...]

    @property
    def batch_size(self) -> int:
        return int(self.label_map.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.label_map.shape[1]), int(self.label_map.shape[2])

    def scores(self, class_ids: Sequence[int], device: Any = "cpu") -> Any:
        """B×K×H×W scores of the given classes at the original resolution (the values the label map is the
        argmax of)."""
        import torch

        ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        out = []
        for i in range(self.batch_size):
            full = semantic_scores(self.class_logits[i].to(device), self.mask_logits[i].to(device))
            out.append(upsample_scores(full[ids.to(device)], self.size).cpu())
        return torch.stack(out)

    def present_classes(self, index: int) -> list[int]:
        import torch

        return [int(c) for c in torch.unique(self.label_map[index])]

    def class_ids(self, names: Sequence[str]) -> list[int]:
        lookup = {name: i for i, name in enumerate(self.names)}
        return [lookup[name] for name in names]


# ----- running the model

@dataclass(frozen=True)
class _Item:
    order: int  # position in the flattened request
    pixels: Any  # H×W×3 uint8 tensor at the processed size (on the device when no resize was needed)
    original: tuple[int, int]


def _run_batch(module: Any, items: Sequence[_Item], table: Any, dtype: Any, pad_to: tuple[int, int] | None,
               channels_last: bool) -> list[tuple[Any, Any]]:
    import torch

    if pad_to is not None:
        batch = torch.zeros((len(items), pad_to[0], pad_to[1], 3), dtype=torch.uint8, device=table.device)
        for k, item in enumerate(items):
            h, w = item.pixels.shape[:2]
            batch[k, :h, :w] = item.pixels.to(table.device)
    else:
        batch = torch.stack([item.pixels.to(table.device) for item in items])
    # Zero padding happens after normalisation in the processor: pad the normalised values, not the uint8s.
    values = pixel_values(batch, table)
    if pad_to is not None:
        for k, item in enumerate(items):
            h, w = item.pixels.shape[:2]
            values[k, :, h:, :] = 0
            values[k, :, :, w:] = 0
    values = values.to(dtype)
    if channels_last:
        values = values.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        output = module(pixel_values=values)
    results = []
    for k, item in enumerate(items):
        h, w = item.pixels.shape[:2]
        masks = output.masks_queries_logits[k]
        if pad_to is not None:  # crop to this image's own region (processed sizes are multiples of 4)
            scale = pad_to[0] // masks.shape[-2]
            masks = masks[:, : h // scale, : w // scale]
        results.append((output.class_queries_logits[k].float(), masks.float()))
    return results


def segment(segmenter: Segmenter, images: Sequence[Any], *, resolution: int = 0, batch_size: int = 8,
            mode: str = "group", device: Any = "cpu", dtype: Any = None, channels_last: bool = False,
            progress: Callable[[int, int], None] | None = None, module: Any = None) -> list[Segmentation]:
    """Segment a list of IMAGE tensors (each B×H×W×C; sizes may differ between tensors).

    Returns one Segmentation per input tensor. `mode` is "group" (exact: one batch per processed size) or "pad"
    (pad a mixed batch to its largest size, crop each result to its own region). `module` replaces the
    segmenter's own device copy (e.g. a torch.compile'd one, for benchmarks)."""
    import torch

    if mode not in ("group", "pad"):
        raise ValueError(f"unknown batching mode {mode!r}; expected 'group' or 'pad'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    dtype = dtype or torch.float32
    prep = segmenter.preprocessing.at_resolution(resolution)
    if module is None:
        module = segmenter.module_for(device, dtype, channels_last=channels_last)  # weights cast, no autocast
    table = torch.from_numpy(normalisation_table(prep)).to(device)

    items: list[_Item] = []
    shapes: list[tuple[int, int, int]] = []  # (batch, H, W) per input tensor
    for tensor in images:
        if tensor.ndim != 4:
            raise ValueError(f"IMAGE must be B×H×W×C, got shape {tuple(tensor.shape)}")
        shapes.append((int(tensor.shape[0]), int(tensor.shape[1]), int(tensor.shape[2])))
        for image in tensor:
            original = (int(image.shape[0]), int(image.shape[1]))
            size = processed_size(*original, prep)
            # no resize: quantise on the device; a resize runs PIL on the CPU, exactly as the processor does
            pixels = to_uint8_rgb(image.to(device) if size == original else image.cpu())
            items.append(_Item(len(items), resize_uint8(pixels, size), original))

    batches = _plan_batches(items, batch_size, mode)
    outputs: dict[int, tuple[Any, Any]] = {}
    for done, (batch, pad_to) in enumerate(batches):
        for item, result in zip(batch, _run_batch(module, batch, table, dtype, pad_to, channels_last)):
            outputs[item.order] = result
        if progress is not None:
            progress(done + 1, len(batches))

    results, cursor = [], 0
    for count, height, width in shapes:
        labels, class_logits, mask_logits = [], [], []
        for order in range(cursor, cursor + count):
            cls, masks = outputs[order]
            labels.append(label_map(semantic_scores(cls, masks), (height, width)).cpu())
            class_logits.append(cls.cpu())
            mask_logits.append(masks.cpu())
        cursor += count
        results.append(Segmentation(label_map=torch.stack(labels), class_logits=torch.stack(class_logits),
                                    mask_logits=torch.stack(mask_logits), names=segmenter.labels))
    return results


def _plan_batches(items: Sequence[_Item], batch_size: int, mode: str) -> list[tuple[list[_Item], Any]]:
    if mode == "group":
        groups: dict[tuple[int, int], list[_Item]] = {}
        for item in items:
            groups.setdefault(tuple(item.pixels.shape[:2]), []).append(item)
        return [(group[i:i + batch_size], None) for group in groups.values()
                for i in range(0, len(group), batch_size)]
    # pad: sort by area so that each batch pads as little as possible
    ordered = sorted(items, key=lambda it: it.pixels.shape[0] * it.pixels.shape[1])
    plans = []
    for i in range(0, len(ordered), batch_size):
        batch = ordered[i:i + batch_size]
        height = max(it.pixels.shape[0] for it in batch)
        width = max(it.pixels.shape[1] for it in batch)
        same = all(tuple(it.pixels.shape[:2]) == (height, width) for it in batch)
        plans.append((batch, None if same else (height, width)))
    return plans
