"""Shared helpers for the segmentation tests (training, export, CLI, workflows).

One workspace per test process holds the tiny Mask2Former and two synthetic datasets; the model fine-tuned
on the "shapes" dataset is trained once and shared by the training and export tests. Training and export
run on one torch thread (see tests/support/torch_threads.py).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.backends.runtime import Runtime
from engine.core.registry import NodeRegistry
from engine.memory.manager import MemoryManager
from engine.models.segmentation.mask2former import load_segmenter
from engine.models.segmentation.pipeline import segment
from engine.training.segmentation.config import TrainConfig
from engine.training.segmentation.synthetic import write_synthetic_dataset
from engine.training.segmentation.trainer import train
from engine.zoo.segmentation import write_tiny_segmenter
from tests.support.flux import capture_image
from tests.support.torch_threads import single_thread

# Settings that teach the tiny random model the synthetic shapes in under a hundred steps. Batches of 8 cost
# little more than batches of 2 at this size (per-op overhead dominates), so steps are few and large.
FAST_SETTINGS = dict(batch_size=8, crop_size=64, learning_rate=2e-3, warmup_steps=20, num_points=256,
                     backbone_lr_multiplier=1.0, scale_min=0.75, scale_max=1.5)
FINETUNE_EPOCHS = 20  # 48 images, batch 8: 120 steps
STEPS_PER_EPOCH = 6
TINY_SEGMENTER = "tiny-mask2former-swin-ade"


@functools.lru_cache(maxsize=None)
def workspace() -> Path:
    """models/segmentation/ with the tiny zoo, input/shapes/ with the synthetic dataset (once per process)."""
    base = Path(tempfile.mkdtemp(prefix="fluxgraph-segtrain-"))
    atexit.register(shutil.rmtree, base, True)
    write_tiny_segmenter(base / "models")
    write_synthetic_dataset(base / "input" / "shapes", train=48, val=8, size=64, seed=0)
    write_synthetic_dataset(base / "input" / "small", train=4, val=2, size=64, seed=1)
    return base


def tiny_base() -> str:
    return str(workspace() / "models" / "segmentation" / TINY_SEGMENTER)


@functools.lru_cache(maxsize=None)
def finetuned_run() -> Any:
    """The tiny model fine-tuned on the shapes dataset (shared by the training and export tests)."""
    config = TrainConfig(data_dir=str(workspace() / "input" / "shapes"),
                         output_dir=str(workspace() / "models" / "segmentation" / "shapes-run"),
                         base_model=tiny_base(), epochs=FINETUNE_EPOCHS, evaluate_first=True, **FAST_SETTINGS)
    with single_thread():
        return train(config)


def load_segmenter_tiny() -> Any:
    return load_segmenter(workspace() / "models" / "segmentation" / TINY_SEGMENTER)


def segmentation_runtime() -> Any:
    """A runtime over the workspace (all node packs plus CaptureImage), on the CPU."""
    registry = NodeRegistry().discover("nodes")
    registry.register(capture_image)
    return Runtime.create(workspace(), registry=registry, models=MemoryManager(device="cpu"))


def execute(runtime: Any, prompt: dict, events: list | None = None, on_event: Any = None,
            interrupt: Any = None) -> Any:
    """Validate then run `prompt` on one thread, recording (kind, data) events into `events` if given."""
    checked = runtime.validate(prompt)
    assert checked.ok and not checked.node_errors, (checked.error, checked.node_errors)

    def record(kind: str, data: dict) -> None:
        if events is not None:
            events.append((kind, data))
        if on_event is not None:
            on_event(kind, data)

    with single_thread():
        return runtime.executor.execute(checked.prompt, prompt_id="train", on_event=record, interrupt=interrupt)


def present_class(runtime: Any) -> str:
    """The class the tiny segmenter gives most pixels of input/segment_example.png (its labels are random)."""
    segmenter = load_segmenter(runtime.folders.model_path("segmentation", TINY_SEGMENTER))
    picture = torch.from_numpy(np.array(Image.open(runtime.folders.input_dir / "segment_example.png")))
    [result] = segment(segmenter, [picture.float()[None] / 255.0])
    ids, counts = torch.unique(result.label_map, return_counts=True)
    return segmenter.labels[int(ids[counts.argmax()])]
