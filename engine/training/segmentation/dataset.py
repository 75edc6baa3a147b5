"""The training dataset: a folder of images and PNG label maps, checked completely before training starts.

    DATA/
      classes.json              optional: ["background", "crack", ...] or {"0": "background", ...}
      images/train/NAME.jpg     any format PIL reads (.jpg .jpeg .png .bmp .webp .tif .tiff)
      images/val/NAME.jpg
      annotations/train/NAME.png   single-channel label map (mode L, P or I;16) of the image's size:
      annotations/val/NAME.png     pixel value = class id, 255 = ignored

ADE20K's own folder names (`training`, `validation`) are accepted for the splits. With `reduce_labels` the
values are ADE20K's raw ones: 0 is "unlabelled" (ignored) and 1..N are classes 0..N-1.
Without `classes.json` the classes are the base model's.

`validate_dataset` reads every file once and reports every problem it finds (up to a limit) in one
`DatasetError`: a missing folder, an empty split, an image without its annotation or the reverse, an
unreadable file, an annotation that is not a single-channel map or not the image's size, label ids outside
the class list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "validation")}
LABEL_MODES = ("L", "P", "I;16", "I")
MAX_REPORTED_PROBLEMS = 12


class DatasetError(ValueError):
    """A dataset that cannot be trained on; the message lists each problem with its file."""
    def __init__(self, root: Path, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_REPORTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        text = f"dataset {root} has {len(self.problems)} problem(s):\n  - " + "\n  - ".join(shown)
        super().__init__(text + (f"\n  ... and {more} more" if more > 0 else ""))


@dataclass(frozen=True)
class Sample:
    image: Path
    annotation: Path


@dataclass(frozen=True)
class DatasetInfo:
    root: Path
    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    reduce_labels: bool
    class_pixels: tuple[int, ...]  # labelled pixels per class over the train split

    def split(self, name: str) -> tuple[Sample, ...]:
        return {"train": self.train, "val": self.val}[name]


def read_classes(root: Path) -> tuple[str, ...] | None:
    path = root / "classes.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(root, [f"classes.json is not readable JSON: {exc}"]) from exc
    if isinstance(data, dict):
        try:
            by_id = {int(key): str(value) for key, value in data.items()}
        except ValueError as exc:
            raise DatasetError(root, [f"classes.json: keys must be class ids 0..N-1, got {list(data)[:5]}"]) \
                from exc
        if sorted(by_id) != list(range(len(by_id))):
            raise DatasetError(root, [f"classes.json: ids must be 0..{len(by_id) - 1} without gaps, got "
                                      f"{sorted(by_id)[:10]}"])
        names = [by_id[i] for i in range(len(by_id))]
    elif isinstance(data, list) and all(isinstance(name, str) for name in data):
        names = list(data)
    else:
        raise DatasetError(root, ["classes.json must be a list of class names or an object {\"0\": name, ...}"])
    if not names:
        raise DatasetError(root, ["classes.json names no classes"])
    if len(names) >= IGNORE_INDEX:
        raise DatasetError(root, [f"classes.json names {len(names)} classes; at most {IGNORE_INDEX - 1} fit "
                                  f"(label value {IGNORE_INDEX} means 'ignored')"])
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(root, [f"classes.json repeats class name(s): {', '.join(duplicates)}"])
    return tuple(names)


def _split_folder(parent: Path, split: str) -> Path | None:
    for name in SPLIT_NAMES[split]:
        if (parent / name).is_dir():
            return parent / name
    return None


def _pair_split(root: Path, split: str, problems: list[str]) -> list[Sample]:
    images_dir = _split_folder(root / "images", split)
    labels_dir = _split_folder(root / "annotations", split)
    expected = " or ".join(SPLIT_NAMES[split])
    if images_dir is None:
        problems.append(f"missing folder images/{expected}")
    if labels_dir is None:
        problems.append(f"missing folder annotations/{expected}")
    if images_dir is None or labels_dir is None:
        return []
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    labels = {p.stem: p for p in sorted(labels_dir.iterdir()) if p.suffix.lower() == ".png"}
    if not images:
        problems.append(f"empty split: {images_dir.relative_to(root)} holds no images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    for stem, image in images.items():
        if stem not in labels:
            problems.append(f"{image.relative_to(root)} has no annotation "
                            f"{(labels_dir / (stem + '.png')).relative_to(root)}")
    for stem, label in labels.items():
        if stem not in images:
            problems.append(f"{label.relative_to(root)} has no image in {images_dir.relative_to(root)}")
    return [Sample(images[stem], labels[stem]) for stem in images if stem in labels]


def load_image(path: Path) -> np.ndarray:
    """H×W×3 uint8."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))  # a writable copy (torch.from_numpy needs one)


def load_label_map(path: Path, reduce_labels: bool) -> np.ndarray:
    """H×W uint8 class ids with IGNORE_INDEX where unlabelled (raw values must already be checked)."""
    with Image.open(path) as image:
        raw = np.array(image)
    return _to_class_ids(raw, reduce_labels)


def _to_class_ids(raw: np.ndarray, reduce_labels: bool) -> np.ndarray:
    raw = raw.astype(np.int64)
    if reduce_labels:
        raw = np.where(raw == 0, IGNORE_INDEX, raw - 1)
        raw = np.where(raw == IGNORE_INDEX - 1, IGNORE_INDEX, raw)  # raw 255 stays ignored
    return raw.astype(np.uint8) if raw.max(initial=0) <= IGNORE_INDEX else raw


def _check_sample(root: Path, sample: Sample, num_classes: int, reduce_labels: bool, problems: list[str],
                  pixels: np.ndarray | None) -> None:

    try:
        with Image.open(sample.image) as image:
            image.load()
            image_size = image.size
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        problems.append(f"{sample.image.relative_to(root)}: unreadable image ({exc})")
        return
    try:
        with Image.open(sample.annotation) as label:
            label.load()
            mode, label_size = label.mode, label.size
            raw = np.asarray(label)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        problems.append(f"{sample.annotation.relative_to(root)}: unreadable annotation ({exc})")
        return
    where = sample.annotation.relative_to(root)
    if mode not in LABEL_MODES:
        problems.append(f"{where}: annotation must be a single-channel label map (PNG mode "
                        f"{'/'.join(LABEL_MODES)}), got mode {mode}")
        return
    if label_size != image_size:
        problems.append(f"{where}: size {label_size[0]}x{label_size[1]} differs from its image's "
                        f"{image_size[0]}x{image_size[1]} (width x height)")
        return
    ids = _to_class_ids(raw, reduce_labels)
    values = np.unique(ids)
    bad = [int(v) for v in values if v >= num_classes and v != IGNORE_INDEX]
    if bad:
        hint = "" if reduce_labels or not bad or max(bad) != num_classes else (
            "; if 0 means 'unlabelled' as in ADE20K's files, train with reduce_labels")
        problems.append(f"{where}: label id(s) {bad[:8]} outside the class list 0..{num_classes - 1} "
                        f"({IGNORE_INDEX} = ignored){hint}")
        return
    if pixels is not None:
        valid = ids[ids != IGNORE_INDEX]
        pixels += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]


def validate_dataset(data_dir: str | Path, base_classes: Sequence[str], reduce_labels: bool = False) -> DatasetInfo:
    """Check the whole dataset; raise DatasetError listing every problem, else describe it."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(root, [f"dataset folder not found: {root}"])
    problems: list[str] = []
    for folder in ("images", "annotations"):
        if not (root / folder).is_dir():
            problems.append(f"missing folder {folder}/ (expected {folder}/train and {folder}/val)")
    if problems:
        raise DatasetError(root, problems)
    classes = read_classes(root) or tuple(base_classes)
    splits = {split: _pair_split(root, split, problems) for split in SPLIT_NAMES}
    pixels = np.zeros(len(classes), dtype=np.int64)
    for split, samples in splits.items():
        for sample in samples:
            _check_sample(root, sample, len(classes), reduce_labels, problems, pixels if split == "train" else None)
    if not problems and not pixels.any():
        problems.append("the train split has no labelled pixel (every annotation is 'ignored')")
    if problems:
        raise DatasetError(root, problems)
    return DatasetInfo(root=root, classes=classes, train=tuple(splits["train"]), val=tuple(splits["val"]),
                       reduce_labels=reduce_labels, class_pixels=tuple(int(p) for p in pixels))


def load_sample(sample: Sample, reduce_labels: bool) -> tuple[np.ndarray, np.ndarray]:
    return load_image(sample.image), load_label_map(sample.annotation, reduce_labels)


def describe(info: DatasetInfo) -> dict[str, Any]:
    return {"train_images": len(info.train), "val_images": len(info.val), "classes": len(info.classes)}
