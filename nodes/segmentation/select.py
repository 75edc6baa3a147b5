"""SegmentationToMask: the pixels of chosen classes (by name or id), optionally above a score threshold -> MASK."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Float, Output, Socket, String, node
from engine.core.types import MASK, SEGMENTATION

from .labels import ade20k_names, resolve_classes, split_class_list

NO_CLASS = "(none)"


def _class_choices(_env: Any = None) -> list[str]:
    return [NO_CLASS, *ade20k_names()]


def requested_classes(class_name: str, more_classes: str) -> list[str]:
    entries = [] if class_name in ("", NO_CLASS) else [class_name]
    return entries + split_class_list(more_classes or "")


def validate_class_inputs(class_name: str = NO_CLASS, more_classes: str = "") -> Any:
    """Names are checked against ADE20K's; integer ids pass here and are checked against the model when it runs
    (a model with another label set is addressed by ids)."""
    entries = requested_classes(class_name, more_classes)
    if not entries:
        return "choose at least one class (class_name or more_classes)"
    names_only = [e for e in entries if not e.lstrip("-").isdigit()]
    try:
        resolve_classes(names_only, ade20k_names())
    except ValueError as exc:
        return str(exc)
    return True


def class_mask(segmentation: Any, class_ids: list[int], threshold: float) -> Any:
    """B×H×W float mask: pixels labelled with one of the classes, and, with a threshold > 0, whose score for
    their class reaches it."""
    import torch

    labels = segmentation.label_map
    mask = torch.zeros(labels.shape, dtype=torch.bool)
    for class_id in class_ids:
        mask |= labels == class_id
    if threshold > 0 and mask.any():
        scores = segmentation.scores(class_ids)  # B×K×H×W
        best = torch.zeros(labels.shape)
        for k, class_id in enumerate(class_ids):
            best = torch.where(labels == class_id, scores[:, k], best)
        mask &= best >= threshold
    return mask.float()


@node("SegmentationToMask", category="segmentation", display_name="Segmentation to Mask",
      inputs=[Socket("segmentation", SEGMENTATION),
              Combo("class_name", _class_choices, default="sky", tooltip="A class to select (ADE20K names)"),
              String("more_classes", "", tooltip="More classes, comma-separated: names or class ids"),
              Float("threshold", 0.0, min=0.0, max=10.0, step=0.01,
                    tooltip="Keep only pixels whose score for their class reaches this (0: every labelled pixel)")],
      outputs=[Output(MASK)],
      validate_inputs=validate_class_inputs,
      description="A mask of the pixels labelled with any of the chosen classes (B×H×W, 1 inside).")
def segmentation_to_mask(ctx: Any, segmentation: Any, class_name: str, more_classes: str = "",
                         threshold: float = 0.0):
    entries = requested_classes(class_name, more_classes)
    if not entries:
        raise ValueError("SegmentationToMask: no class chosen (class_name is '(none)' and more_classes is empty)")
    ids = resolve_classes(entries, segmentation.names)
    return (class_mask(segmentation, ids, float(threshold)),)


NODES = [segmentation_to_mask]
