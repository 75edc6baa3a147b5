"""Dataset checks before training: each kind of broken dataset is refused with the file and the problem named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.training.segmentation.dataset import DatasetError, validate_dataset
from engine.training.segmentation.synthetic import CLASSES, write_synthetic_dataset

BASE_CLASSES = [f"class_{i}" for i in range(150)]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_synthetic_dataset(tmp_path / "data", train=3, val=2, size=32, seed=4)


def problems(root: Path, **kwargs) -> str:
    with pytest.raises(DatasetError) as caught:
        validate_dataset(root, BASE_CLASSES, **kwargs)
    return str(caught.value)


def test_a_valid_dataset_is_described(dataset):
    info = validate_dataset(dataset, BASE_CLASSES)
    assert info.classes == CLASSES and len(info.train) == 3 and len(info.val) == 2
    assert info.class_pixels[0] > 0 and sum(info.class_pixels) > 0


def test_image_without_annotation_and_annotation_without_image(dataset):
    (dataset / "annotations/train/train_0001.png").unlink()
    Image.new("L", (32, 32)).save(dataset / "annotations/val/orphan.png")
    text = problems(dataset)
    assert "images/train/train_0001.jpg has no annotation annotations/train/train_0001.png" in text
    assert "annotations/val/orphan.png has no image in images/val" in text
    assert "2 problem(s)" in text  # every problem at once, not the first only


def test_label_ids_outside_the_class_list_are_named_with_their_file(dataset):
    label = np.zeros((32, 32), dtype=np.uint8)
    label[:4, :4] = 7
    Image.fromarray(label).save(dataset / "annotations/val/val_0000.png")
    text = problems(dataset)
    assert "annotations/val/val_0000.png: label id(s) [7] outside the class list 0..3 (255 = ignored)" in text


def test_ade20k_style_files_hint_at_reduce_labels_and_load_with_it(dataset):
    (dataset / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    # with 3 classes, raw value 3 is one too many: the ADE20K convention (0 = unlabelled) would fit
    assert "train with reduce_labels" in problems(dataset)
    info = validate_dataset(dataset, BASE_CLASSES, reduce_labels=True)
    assert info.classes == ("a", "b", "c")


def test_unreadable_files_and_wrong_annotation_kinds(dataset):
    (dataset / "images/train/train_0000.jpg").write_bytes(b"not an image")
    Image.new("RGB", (32, 32)).save(dataset / "annotations/train/train_0001.png")
    Image.new("L", (16, 32)).save(dataset / "annotations/train/train_0002.png")
    text = problems(dataset)
    assert "images/train/train_0000.jpg: unreadable image" in text
    assert "annotations/train/train_0001.png: annotation must be a single-channel label map" in text
    assert "got mode RGB" in text
    assert "annotations/train/train_0002.png: size 16x32 differs from its image's 32x32" in text


def test_empty_and_missing_splits(tmp_path, dataset):
    for path in (dataset / "images/val").iterdir():
        path.unlink()
    for path in (dataset / "annotations/val").iterdir():
        path.unlink()
    assert "empty split: images/val holds no images" in problems(dataset)
    bare = tmp_path / "bare"
    (bare / "images" / "train").mkdir(parents=True)
    (bare / "annotations" / "train").mkdir(parents=True)
    text = problems(bare)
    assert "missing folder images/val or validation" in text and "missing folder annotations/val" in text
    assert "dataset folder not found" in problems(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    assert "missing folder images/" in problems(tmp_path / "flat")


def test_ade20k_split_names_are_accepted(dataset):
    for top in ("images", "annotations"):
        (dataset / top / "train").rename(dataset / top / "training")
        (dataset / top / "val").rename(dataset / top / "validation")
    info = validate_dataset(dataset, BASE_CLASSES)
    assert len(info.train) == 3 and len(info.val) == 2


def test_classes_json_errors(dataset):
    (dataset / "classes.json").write_text("{not json")
    assert "classes.json is not readable JSON" in problems(dataset)
    (dataset / "classes.json").write_text(json.dumps({"0": "a", "2": "b"}))
    assert "ids must be 0..1 without gaps" in problems(dataset)
    (dataset / "classes.json").write_text(json.dumps(["a", "a", "b", "c"]))
    assert "repeats class name(s): a" in problems(dataset)
    (dataset / "classes.json").write_text(json.dumps({"0": "bg", "1": "disc", "2": "square", "3": "triangle"}))
    assert validate_dataset(dataset, BASE_CLASSES).classes == ("bg", "disc", "square", "triangle")


def test_without_classes_json_the_base_model_classes_apply(dataset):
    (dataset / "classes.json").unlink()
    assert validate_dataset(dataset, BASE_CLASSES).classes == tuple(BASE_CLASSES)


def test_a_train_split_with_only_ignored_pixels_is_refused(dataset):
    for path in (dataset / "annotations/train").iterdir():
        Image.fromarray(np.full((32, 32), 255, dtype=np.uint8)).save(path)
    assert "the train split has no labelled pixel" in problems(dataset)
