"""A LoRA training set: a folder of images with captions, sorted into aspect-ratio buckets.

Captions come from `metadata.jsonl` (one {"file_name": ..., "text": ...} per line, as diffusers' imagefolder
reads it; "caption" or "prompt" are accepted for "text") when the folder has one, otherwise from a `.txt` file
beside each image with the same stem. Images without a caption are an error naming them (an empty .txt file
is an empty caption, on purpose).

Buckets hold about resolution^2 pixels, both sides multiples of 16 (FLUX.1's 2x2 patch of 8x latents, FLUX.2's
16x latents), aspect ratios from 1:4 to 4:1; each image goes to the bucket of the closest aspect ratio and is
either scaled to cover it and centre-cropped (`center_crop`) or resized to it. Both are deterministic, so the
latents can be cached once per image and bucket.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from engine.core.file_digest import file_sha256
from engine.training.flux_lora.config import IMAGE_FORMATS

SIDE_MULTIPLE = 16
MAX_ASPECT = 4.0
METADATA_FILE = "metadata.jsonl"


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on, with what is wrong and where."""


@dataclass(frozen=True)
class Sample:
    image: Path
    caption: str
    sha256: str  # of the image file's bytes: the latent cache key
    width: int
    height: int


def _metadata_captions(folder: Path) -> dict[str, str]:
    captions = {}
    for number, line in enumerate((folder / METADATA_FILE).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
            text = next(row[k] for k in ("text", "caption", "prompt") if k in row)
        except (json.JSONDecodeError, KeyError, StopIteration, TypeError):
            raise DatasetError(f"{folder / METADATA_FILE} line {number}: expected a JSON object with 'file_name' and "
                               "'text'") from None
        captions[str(name)] = str(text)
    return captions


def scan_dataset(folder: str | Path) -> list[Sample]:
    """Every image of `folder` (recursively) with its caption, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_FORMATS)
    if not images:
        raise DatasetError(f"{folder} holds no images ({', '.join(IMAGE_FORMATS)})")
    metadata = _metadata_captions(folder) if (folder / METADATA_FILE).is_file() else None
    samples, missing = [], []
    for path in images:
        relative = path.relative_to(folder).as_posix()
        if metadata is not None:
            caption = metadata.get(relative, metadata.get(path.name))
        else:
            text_file = path.with_suffix(".txt")
            caption = text_file.read_text(encoding="utf-8").strip() if text_file.is_file() else None
        if caption is None:
            missing.append(relative)
            continue
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as exc:
            raise DatasetError(f"{path} is not a readable image: {exc}") from None
        samples.append(Sample(path, caption, file_sha256(path), width, height))
    if missing:
        where = f"in {METADATA_FILE}" if metadata is not None else "(no same-named .txt file)"
        raise DatasetError(f"{len(missing)} image(s) of {folder} have no caption {where}: {', '.join(missing[:8])}"
                           f"{' ...' if len(missing) > 8 else ''}")
    return samples


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """(width, height) buckets of about resolution^2 pixels, sides multiples of 16, aspect 1:4 to 4:1."""
    area = resolution * resolution
    buckets = set()
    width = SIDE_MULTIPLE
    while width <= resolution * 2:
        height = (area // width) // SIDE_MULTIPLE * SIDE_MULTIPLE
        if height >= SIDE_MULTIPLE and 1 / MAX_ASPECT <= width / height <= MAX_ASPECT:
            buckets.add((width, height))
        width += SIDE_MULTIPLE
    return sorted(buckets)


def choose_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log ratio) to the image's; the larger one on a tie."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def load_pixels(sample: Sample, bucket: tuple[int, int], center_crop: bool) -> np.ndarray:
    """The image as float32 [H, W, 3] in 0..1, fitted to `bucket` (width, height)."""
    bucket_w, bucket_h = bucket
    with Image.open(sample.image) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    if center_crop:
        scale = max(bucket_w / image.width, bucket_h / image.height)
        size = (max(bucket_w, round(image.width * scale)), max(bucket_h, round(image.height * scale)))
        image = image.resize(size, Image.BICUBIC)
        left, top = (size[0] - bucket_w) // 2, (size[1] - bucket_h) // 2
        image = image.crop((left, top, left + bucket_w, top + bucket_h))
    else:
        image = image.resize((bucket_w, bucket_h), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def epoch_batches(buckets: list[tuple[int, int]], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Sample indices of one epoch, in batches of one bucket each: shuffled within buckets, then the batches
    shuffled; a function of (seed, epoch) only, so a resumed run sees the same order."""
    rng = np.random.default_rng([seed, epoch])
    groups: dict[tuple[int, int], list[int]] = {}
    for index, bucket in enumerate(buckets):
        groups.setdefault(bucket, []).append(index)
    batches = []
    for bucket in sorted(groups):
        order = [groups[bucket][i] for i in rng.permutation(len(groups[bucket]))]
        batches.extend(order[i:i + batch_size] for i in range(0, len(order), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]
