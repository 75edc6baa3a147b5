"""Training settings: one dataclass shared by the node, the CLI and the checkpoint (stdlib only).

`TrainConfig.check()` refuses impossible values with the setting's name and the accepted range, before any
model or image is loaded. The settings that decide the result are saved in each checkpoint so that a resumed
run continues exactly the run it came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SCHEDULES = ("poly", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 (or fp16) autocast on a GPU, fp32 on the CPU

# Settings a resumed run may change without leaving the original run's trajectory (where to write, how often
# to save, how to report); everything else must equal the checkpoint's values.
RESUME_FREE_FIELDS = frozenset({"data_dir", "output_dir", "base_model", "resume", "save_every", "device",
                                "eval_batch_size", "max_steps", "evaluate_first"})


class TrainConfigError(ValueError):
    """A training setting out of range, with its name and what is accepted."""


@dataclass
class TrainConfig:
    data_dir: str
    output_dir: str  # the run folder: best/ and last/ are written inside it
    base_model: str = ""  # path of the base segmenter (transformers folder or single safetensors file)
    epochs: int = 10
    batch_size: int = 8
    grad_accumulation: int = 1  # batches per optimizer step
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    backbone_lr_multiplier: float = 0.1  # the reference recipes train the Swin backbone 10x slower
    schedule: str = "poly"
    poly_power: float = 0.9
    warmup_steps: int = 0  # optimizer steps of linear warm-up from 1% of the learning rate
    max_grad_norm: float = 0.01  # Mask2Former's full-model gradient clipping (0: off)
    freeze_backbone: bool = False
    precision: str = "auto"
    crop_size: int = 0  # square training crops (0: the base model's short side)
    scale_min: float = 0.5  # random rescale of the short side, as a fraction of the base model's short side
    scale_max: float = 2.0
    max_category_ratio: float = 0.75  # a crop is redrawn (up to 10 times) while one class fills more than this
    flip: bool = True
    reduce_labels: bool = False  # ADE20K's raw files: 0 is "unlabelled" (ignored), 1..N are classes 0..N-1
    num_points: int = 0  # points sampled per mask by the losses (0: the base config's train_num_points)
    seed: int = 0
    eval_batch_size: int = 4
    evaluate_first: bool = False  # also measure the val split before training (history entry of epoch 0)
    save_every: int = 0  # also write last/ every N optimizer steps (0: at the end of each epoch only)
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs); the schedule is unchanged
    device: str = ""  # "" picks CUDA when available
    resume: str = ""  # a run folder or its last/ folder to continue from

    def check(self) -> "TrainConfig":
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "grad_accumulation": self.grad_accumulation, "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise TrainConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        non_negative = {"warmup_steps": self.warmup_steps, "num_points": self.num_points,
                        "save_every": self.save_every, "max_steps": self.max_steps, "crop_size": self.crop_size}
        for name, value in non_negative.items():
            if not isinstance(value, int) or value < 0:
                raise TrainConfigError(f"{name} must be a whole number >= 0, got {value!r}")
        if self.crop_size and self.crop_size % 32:
            raise TrainConfigError(f"crop_size must be a multiple of 32 (the Swin backbone's stride), got "
                                   f"{self.crop_size}")
        if not 0 < self.learning_rate < 1:
            raise TrainConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.weight_decay < 1:
            raise TrainConfigError(f"weight_decay must be in [0, 1), got {self.weight_decay}")
        if not 0 < self.backbone_lr_multiplier <= 10:
            raise TrainConfigError(f"backbone_lr_multiplier must be in (0, 10], got {self.backbone_lr_multiplier}")
        if self.schedule not in SCHEDULES:
            raise TrainConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 < self.scale_min <= self.scale_max <= 8:
            raise TrainConfigError(f"scale range must satisfy 0 < scale_min <= scale_max <= 8, got "
                                   f"{self.scale_min}..{self.scale_max}")
        if not 0 < self.max_category_ratio <= 1:
            raise TrainConfigError(f"max_category_ratio must be in (0, 1], got {self.max_category_ratio}")
        if self.poly_power <= 0 or self.max_grad_norm < 0:
            raise TrainConfigError("poly_power must be > 0 and max_grad_norm >= 0")
        if not self.data_dir:
            raise TrainConfigError("data_dir is required: the dataset folder (images/ and annotations/)")
        if not self.base_model and not self.resume:
            raise TrainConfigError("base_model is required (the segmenter to start from), unless resuming a run")
        if not self.output_dir:
            raise TrainConfigError("output_dir is required: where best/ and last/ are written")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)

    def differences(self, other: "TrainConfig") -> list[str]:
        """Settings that change the training trajectory and differ between the two configs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{key}: {theirs[key]!r} in the checkpoint, {mine[key]!r} now" for key in mine
                if key not in RESUME_FREE_FIELDS and mine[key] != theirs[key]]
