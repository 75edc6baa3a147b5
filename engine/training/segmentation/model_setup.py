"""The model to train: base weights in a Mask2Former built for the dataset's classes, and the losses' targets.

A class count other than the base model's replaces the class head (`class_predictor`, and the losses'
no-object weight); every other weight starts from the base model. Equal counts keep the head and only take
the dataset's names. The losses are transformers' own (Hungarian matching, cross-entropy with a down-weighted
no-object class, sigmoid BCE and dice on sampled points, auxiliary losses on every decoder layer).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import Mask2FormerForUniversalSegmentation

from engine.training.segmentation.dataset import IGNORE_INDEX

REPLACED_WHEN_CLASSES_CHANGE = ("class_predictor.", "criterion.empty_weight")
NO_DECAY_MODULES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.Embedding)


def training_config(base_config: Any, classes: Sequence[str], num_points: int) -> Any:
    """The base config with the dataset's labels (and the losses' point count, when given)."""
    config = base_config.__class__.from_dict(base_config.to_dict())
    config.id2label = {i: name for i, name in enumerate(classes)}
    config.label2id = {name: i for i, name in enumerate(classes)}
    config.num_labels = len(classes)
    if num_points:
        config.train_num_points = num_points
    return config


def build_training_model(base_model: Any, classes: Sequence[str], num_points: int = 0) -> tuple[Any, bool]:
    """A fresh Mask2Former for `classes` holding the base weights; returns it and whether the head was
    replaced. The new head's initial weights come from torch's global generator (seeded by the trainer)."""

    config = training_config(base_model.config, classes, num_points)
    replaced = config.num_labels != base_model.config.num_labels
    model = Mask2FormerForUniversalSegmentation(config)
    state = {key: value for key, value in base_model.state_dict().items()
             if not (replaced and key.startswith(REPLACED_WHEN_CLASSES_CHANGE))}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (replaced and k.startswith(REPLACED_WHEN_CLASSES_CHANGE))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"base weights do not fit the training model: missing {missing[:4]}, unexpected "
                           f"{result.unexpected_keys[:4]}")
    return model.float(), replaced


def backbone(model: Any) -> Any:
    return model.model.pixel_level_module.encoder


def freeze_backbone(model: Any) -> None:
    for parameter in backbone(model).parameters():
        parameter.requires_grad_(False)


def parameter_groups(model: Any, learning_rate: float, weight_decay: float, backbone_multiplier: float
                     ) -> list[dict[str, Any]]:
    """AdamW groups as in the reference recipe: the backbone at a lower rate; no weight decay on norms,
    embeddings (queries, level embeddings) and Swin's relative position tables."""
    backbone_ids = {id(p) for p in backbone(model).parameters()}
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, NO_DECAY_MODULES):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for name, parameter in model.named_parameters():
        if "relative_position_bias_table" in name or name.endswith("level_embed"):
            no_decay.add(id(parameter))
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups.setdefault((id(parameter) in backbone_ids, id(parameter) in no_decay), []).append(parameter)
    return [{"params": params, "lr": learning_rate * (backbone_multiplier if in_backbone else 1.0),
             "weight_decay": 0.0 if skip_decay else weight_decay, "name": f"{'backbone' if in_backbone else 'head'}"
             f"{'-no-decay' if skip_decay else ''}"}
            for (in_backbone, skip_decay), params in sorted(groups.items())]


def loss_targets(labels: Any) -> tuple[list[Any], list[Any]]:
    """B×H×W class ids (IGNORE_INDEX = unlabelled) -> per image the binary mask of each class present and its
    id, as transformers' image processor builds them for semantic segmentation."""
    mask_labels, class_labels = [], []
    for label in labels:
        ids = torch.unique(label)
        ids = ids[ids != IGNORE_INDEX].long()
        mask_labels.append((label[None] == ids[:, None, None]).float())
        class_labels.append(ids)
    return mask_labels, class_labels
