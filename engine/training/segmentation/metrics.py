"""mIoU and per-class IoU on the val split, computed on what the SemanticSegment node would output.

Predictions go through the inference pipeline (`engine.models.segmentation.pipeline.segment`: the image
processor's resize and normalisation, post-processing to the original resolution), so the reported figures
are those of the saved model as the graph runs it. Pixels labelled IGNORE_INDEX do not count. A class's IoU is
intersection / union over the whole split; classes with an empty union (absent from labels and predictions)
have no IoU and are left out of the mean, as in mmsegmentation and detectron2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine.models.segmentation.pipeline import segment
from engine.training.segmentation.dataset import IGNORE_INDEX, Sample, load_sample


@dataclass
class ConfusionMatrix:
    num_classes: int
    counts: np.ndarray = None  # type: ignore[assignment]  # [label, prediction] pixel counts

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, labels: np.ndarray, predictions: np.ndarray) -> None:
        if labels.shape != predictions.shape:
            raise ValueError(f"label map {labels.shape} and prediction {predictions.shape} differ in size")
        keep = labels != IGNORE_INDEX
        truth = labels[keep].astype(np.int64)
        guess = predictions[keep].astype(np.int64)
        if guess.size and (guess.max() >= self.num_classes or guess.min() < 0):
            raise ValueError(f"prediction holds class ids outside 0..{self.num_classes - 1}")
        index = truth * self.num_classes + guess
        self.counts += np.bincount(index, minlength=self.num_classes ** 2).reshape(self.counts.shape)

    def iou(self) -> np.ndarray:
        """Per-class IoU, NaN where the class is neither labelled nor predicted."""
        intersection = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(0) + self.counts.sum(1) - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, intersection / union, np.nan)

    def mean_iou(self) -> float:
        values = self.iou()
        return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0

    def pixel_accuracy(self) -> float:
        total = self.counts.sum()
        return float(np.diag(self.counts).sum() / total) if total else 0.0

    def report(self, names: Sequence[str]) -> dict[str, Any]:
        iou = self.iou()
        return {"miou": round(self.mean_iou(), 6), "pixel_accuracy": round(self.pixel_accuracy(), 6),
                "per_class_iou": {name: (None if np.isnan(v) else round(float(v), 6)) for name, v in zip(names, iou)}}


def predict_label_maps(segmenter: Any, images: Sequence[np.ndarray], *, module: Any = None, device: Any = "cpu",
                       batch_size: int = 4) -> list[np.ndarray]:
    """Label maps (H×W int64, original sizes) of uint8 images, through the inference pipeline."""
    tensors = [torch.from_numpy(np.ascontiguousarray(image)).float()[None] / 255.0 for image in images]
    results = segment(segmenter, tensors, batch_size=batch_size, device=device, module=module)
    return [result.label_map[0].numpy() for result in results]


def evaluate(segmenter: Any, samples: Sequence[Sample], *, reduce_labels: bool, module: Any = None,
             device: Any = "cpu", batch_size: int = 4, chunk: int = 16,
             check_interrupt: Callable[[], None] | None = None) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU of `segmenter` (or `module` with its labels and preprocessing)
    over the samples; images are read `chunk` at a time."""
    matrix = ConfusionMatrix(len(segmenter.labels))
    for start in range(0, len(samples), chunk):
        if check_interrupt is not None:
            check_interrupt()
        pairs = [load_sample(sample, reduce_labels) for sample in samples[start:start + chunk]]
        predictions = predict_label_maps(segmenter, [image for image, _ in pairs], module=module, device=device,
                                         batch_size=batch_size)
        for (_, labels), prediction in zip(pairs, predictions):
            matrix.update(labels, prediction)
    return matrix.report(segmenter.labels)
