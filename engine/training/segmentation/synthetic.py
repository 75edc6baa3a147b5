"""A small synthetic segmentation dataset in the training layout: shapes of a few classes on textured
backgrounds. Used by the tests, the training benchmark and as a worked example of the folder format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("background", "disc", "square", "triangle")
# Each shape class has its own hue; brightness, texture and background vary per image.
CLASS_COLOURS = {1: (200, 60, 50), 2: (60, 170, 70), 3: (60, 90, 210)}


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.integers(60, 200, (size // 8 + 2, size // 8 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR)).astype(np.int16)
    grey = smooth.mean(axis=2, keepdims=True)  # mostly grey backgrounds: hue belongs to the shapes
    return (0.7 * grey + 0.3 * smooth + rng.normal(0, 8, (size, size, 3))).astype(np.int16)


def _shape_mask(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    radius = rng.uniform(0.15, 0.25) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    if kind == 2:
        return (abs(yy - cy) <= radius) & (abs(xx - cx) <= radius)
    # an upward triangle: inside the lines from the apex to the two base corners
    top, bottom = cy - radius, cy + radius
    half_width = (yy - top) / (2 * radius) * radius * 1.6
    return (yy >= top) & (yy <= bottom) & (abs(xx - cx) <= half_width)


def make_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (size×size×3 uint8) and its label map (0 background, 1..3 shapes, 255 on a thin border)."""
    image = _texture(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    for kind in rng.permutation([1, 2, 3])[: int(rng.integers(1, 4))]:
        mask = _shape_mask(int(kind), size, rng)
        colour = np.asarray(CLASS_COLOURS[int(kind)], dtype=np.float64) * rng.uniform(0.8, 1.15)
        image[mask] = (colour + rng.normal(0, 10, (int(mask.sum()), 3))).astype(np.int16)
        label[mask] = kind
    label[:1, :] = 255  # an ignored strip, as real annotations have unlabelled pixels
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_synthetic_dataset(root: str | Path, *, train: int = 24, val: int = 8, size: int = 64, seed: int = 0,
                            with_classes_file: bool = True) -> Path:

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, label = make_sample(rng, size)
            name = f"{split}_{index:04d}"
            Image.fromarray(image).save(root / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(root / "annotations" / split / f"{name}.png")
    if with_classes_file:
        (root / "classes.json").write_text(json.dumps(list(CLASSES)))
    return root
