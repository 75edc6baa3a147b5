"""Training augmentations of the Mask2Former / mmsegmentation recipes: random scale, random crop with a
category-area constraint, horizontal flip. Deterministic for a given numpy Generator, so that a resumed run
draws exactly what the uninterrupted run drew (the trainer seeds one generator per sample and epoch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.training.segmentation.dataset import IGNORE_INDEX

CROP_ATTEMPTS = 10  # redraws while one class fills too much of the crop (mmsegmentation's value)


@dataclass(frozen=True)
class AugmentSettings:
    base_short_side: int  # the model's inference short side; scales are relative to it
    crop_size: int
    scale_min: float = 0.5
    scale_max: float = 2.0
    max_category_ratio: float = 0.75
    flip: bool = True


def _resize(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    if image.shape[:2] == (height, width):
        return image, label
    resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    labels = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
    return resized, labels


def random_scale(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 settings: AugmentSettings) -> tuple[np.ndarray, np.ndarray]:
    """Short side to base_short_side x U(scale_min, scale_max), aspect ratio kept."""
    scale = rng.uniform(settings.scale_min, settings.scale_max)
    height, width = image.shape[:2]
    factor = settings.base_short_side * scale / min(height, width)
    size = (max(1, int(round(height * factor))), max(1, int(round(width * factor))))
    return _resize(image, label, size)


def _crop_ok(label: np.ndarray, max_ratio: float) -> bool:
    values, counts = np.unique(label, return_counts=True)
    counts = counts[values != IGNORE_INDEX]
    return len(counts) > 1 and counts.max() / counts.sum() < max_ratio


def random_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                settings: AugmentSettings) -> tuple[np.ndarray, np.ndarray]:
    """A window of at most crop_size x crop_size, redrawn while one class fills too much of it."""
    size = settings.crop_size
    height, width = image.shape[:2]
    top = left = 0
    for _ in range(CROP_ATTEMPTS):
        top = int(rng.integers(0, max(height - size, 0) + 1))
        left = int(rng.integers(0, max(width - size, 0) + 1))
        if settings.max_category_ratio >= 1.0 or _crop_ok(label[top:top + size, left:left + size],
                                                          settings.max_category_ratio):
            break
    return image[top:top + size, left:left + size], label[top:top + size, left:left + size]


def pad_to(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad at the bottom and right to size x size: labels with IGNORE_INDEX (the image's padding is zeroed
    after normalisation by the trainer, as the image processor pads)."""
    if image.shape[:2] == (size, size):
        return image, label
    padded_image = np.zeros((size, size, 3), dtype=image.dtype)
    padded_label = np.full((size, size), IGNORE_INDEX, dtype=label.dtype)
    padded_image[:image.shape[0], :image.shape[1]] = image
    padded_label[:label.shape[0], :label.shape[1]] = label
    return padded_image, padded_label


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
            settings: AugmentSettings) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(H×W×3 uint8, H×W label ids) -> crop_size² image and labels, and the (height, width) of the real
    content at the top left (the rest is padding)."""
    image, label = random_scale(image, label, rng, settings)
    image, label = random_crop(image, label, rng, settings)
    if settings.flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    content = (int(image.shape[0]), int(image.shape[1]))
    image, label = pad_to(np.ascontiguousarray(image), np.ascontiguousarray(label), settings.crop_size)
    return image, label, content
