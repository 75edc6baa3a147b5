"""Fine-tuning the tiny Mask2Former on a synthetic dataset: mIoU rises, the run resumes exactly, the checkpoint
loads through Mask2FormerLoader and segments in a workflow; the node reports progress, loss and an interrupt.

Training runs on one torch thread: on two cores that other work also uses, two threads spend most of their
time waiting for each other (measured 8x slower per step); one thread is as fast on an idle machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.context import InterruptFlag
from engine.training.segmentation.config import TrainConfig
from tests.support.segmentation import (
    FAST_SETTINGS,
    FINETUNE_EPOCHS,
    STEPS_PER_EPOCH,
    execute,
    finetuned_run,
    segmentation_runtime,
    single_thread,
    tiny_base,
    workspace,
)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_finetuning_raises_val_miou_well_above_its_start():
    result = finetuned_run()
    history = result.history
    start, best = history[0]["val_miou"], result.best_miou
    print(f"val mIoU {start:.3f} before training -> {best:.3f} after {result.steps} steps; per class "
          f"{history[-1]['per_class_iou']}")
    assert history[0]["epoch"] == 0 and len(history) == FINETUNE_EPOCHS + 1
    assert result.steps == FINETUNE_EPOCHS * STEPS_PER_EPOCH
    assert best >= start + 0.4 and best >= 0.6
    shapes = [history[-1]["per_class_iou"][name] for name in ("disc", "square", "triangle")]
    assert all(iou is not None and iou > 0.3 for iou in shapes), shapes  # every class is learned, not one
    assert history[-1]["train_loss"] < history[1]["train_loss"]
    saved = json.loads((result.run_dir / "history.json").read_text())
    assert [h["val_miou"] for h in saved] == [h["val_miou"] for h in history]
    best_epoch = max(history[1:], key=lambda h: h["val_miou"])
    assert json.loads((result.best_dir / "metrics.json").read_text())["epoch"] == best_epoch["epoch"]


def test_new_class_head_and_labels_are_saved_for_the_loader():
    from engine.models.segmentation.mask2former import load_segmenter

    result = finetuned_run()
    segmenter = load_segmenter(result.best_dir)
    assert segmenter.labels == ("background", "disc", "square", "triangle")
    assert segmenter.model.class_predictor.out_features == 5  # 4 classes + no-object
    assert segmenter.preprocessing.shortest_edge == 96  # the base model's processing travels along
    assert (result.last_dir / "training_state.pt").is_file()


def _small_config(name: str, **overrides: Any) -> TrainConfig:
    settings = {**FAST_SETTINGS, "batch_size": 2, "epochs": 3, **overrides}
    return TrainConfig(data_dir=str(workspace() / "input" / "small"), base_model=tiny_base(),
                       output_dir=str(workspace() / "models" / "segmentation" / name), **settings)


class StopAt(Exception):
    pass


def test_resume_from_a_mid_epoch_interruption_reproduces_the_uninterrupted_weights():
    from engine.training.segmentation.trainer import TrainEvents, train

    with single_thread():
        straight = train(_small_config("straight"))

        def stop_at_step_3(report: Any) -> None:
            if report.step == 3:
                raise StopAt()

        with pytest.raises(StopAt):
            train(_small_config("paused"), TrainEvents(on_step=stop_at_step_3))
        state = torch.load(workspace() / "models/segmentation/paused/last/training_state.pt", weights_only=True)
        assert (state["epoch"], state["batch_group"], state["step"]) == (1, 1, 3)  # 2 steps per epoch
        resumed = train(_small_config("paused", resume=str(workspace() / "models/segmentation/paused")))
    assert resumed.steps == straight.steps == 6
    a, b = weights(straight.last_dir), weights(resumed.last_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["val_miou"] for h in resumed.history] == [h["val_miou"] for h in straight.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_resume_refuses_changed_settings_and_missing_checkpoints():
    from engine.training.segmentation.checkpoint import CheckpointError
    from engine.training.segmentation.trainer import train

    finetuned_run()
    with pytest.raises(CheckpointError, match=r"learning_rate: 0.002 in the checkpoint, 0.001 now"):
        train(TrainConfig(data_dir=str(workspace() / "input" / "shapes"), base_model=tiny_base(),
                          output_dir=str(workspace() / "models/segmentation/other"),
                          resume=str(workspace() / "models/segmentation/shapes-run"), epochs=FINETUNE_EPOCHS,
                          **{**FAST_SETTINGS, "learning_rate": 1e-3}))
    with pytest.raises(CheckpointError, match="no training_state.pt"):
        train(_small_config("nowhere", resume=str(workspace() / "input")))


def test_training_settings_are_checked_before_anything_loads():
    from engine.training.segmentation.config import TrainConfigError

    with pytest.raises(TrainConfigError, match="crop_size must be a multiple of 32"):
        _small_config("x", crop_size=100).check()
    with pytest.raises(TrainConfigError, match="schedule must be one of poly, cosine"):
        _small_config("x", schedule="step").check()
    with pytest.raises(TrainConfigError, match="batch_size must be a whole number >= 1"):
        _small_config("x", batch_size=0).check()


def test_schedules_warm_up_then_decay():
    from engine.training.segmentation.schedule import lr_factor

    assert lr_factor(0, 100, warmup_steps=10) == pytest.approx(0.01)
    assert lr_factor(5, 100, warmup_steps=10) == pytest.approx((1 - 0.05) ** 0.9 * 0.505)
    assert lr_factor(50, 100, schedule="poly") == pytest.approx(0.5 ** 0.9)
    assert lr_factor(50, 100, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, schedule="cosine") == pytest.approx(0.0)


def test_augmentation_is_deterministic_per_generator_and_pads_with_ignore():
    from engine.training.segmentation.augment import AugmentSettings, augment

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    label = (np.arange(40 * 50).reshape(40, 50) % 3).astype(np.uint8)
    settings = AugmentSettings(base_short_side=32, crop_size=64, scale_min=0.5, scale_max=1.0)
    first = augment(image, label, np.random.default_rng([1, 2, 3]), settings)
    again = augment(image, label, np.random.default_rng([1, 2, 3]), settings)
    assert all(np.array_equal(a, b) for a, b in zip(first[:2], again[:2])) and first[2] == again[2]
    out_image, out_label, (height, width) = first
    assert out_image.shape == (64, 64, 3) and out_label.shape == (64, 64)
    assert height < 64 and (out_label[height:] == 255).all() and (out_image[height:] == 0).all()
    assert set(np.unique(out_label[:height, :width])) <= {0, 1, 2}


# ----- the node, in a workflow

@pytest.fixture(scope="module")
def runtime():
    return segmentation_runtime()


def train_prompt(output_name: str, resume: bool = False) -> dict:
    return {"1": {"class_type": "TrainSegmenter", "inputs": {
        "base_model": "tiny-mask2former-swin-ade", "dataset": "small", "output_name": output_name, "epochs": 2,
        "batch_size": 2, "learning_rate": 0.001, "schedule": "cosine", "warmup_steps": 1, "freeze_backbone": True,
        "grad_accumulation": 1, "crop_size": 64, "precision": "auto", "seed": 3, "resume": resume,
        "num_points": 256}}}


def test_train_node_reports_progress_and_loss_and_resumes_after_an_interrupt(runtime):
    events: list = []
    straight = execute(runtime, train_prompt("node-straight"), events)
    assert straight.status == "success", straight.errors
    progress = [d for kind, d in events if kind == "progress"]
    losses = [d for kind, d in events if kind == "fluxgraph.training"]
    epochs = [d for kind, d in events if kind == "fluxgraph.training_epoch"]
    assert [p["value"] for p in progress] == [1, 2, 3, 4] and {p["max"] for p in progress} == {4}
    assert len(losses) == 4 and all(np.isfinite(d["loss"]) and d["node"] == "1" for d in losses)
    assert [e["epoch"] for e in epochs] == [1, 2] and all("val_miou" in e for e in epochs)
    assert any("saved node-straight/best" in line for line in straight.outputs["1"]["text"])

    token = InterruptFlag()

    def interrupt_after_step_1(kind: str, data: dict) -> None:
        if kind == "progress" and data["value"] == 1:
            token.set()

    stopped = execute(runtime, train_prompt("node-paused"), on_event=interrupt_after_step_1, interrupt=token)
    assert stopped.status == "interrupted"
    again = execute(runtime, train_prompt("node-paused"))  # without resume: refuses to overwrite the run
    assert again.status == "error" and "already holds a training run" in again.error["exception_message"]
    resumed = execute(runtime, train_prompt("node-paused", resume=True))
    assert resumed.status == "success", resumed.errors
    root = workspace() / "models" / "segmentation"
    a, b = weights(root / "node-straight" / "last"), weights(root / "node-paused" / "last")
    assert all(torch.equal(a[key], b[key]) for key in a)
    frozen = [k for k in a if k.startswith("model.pixel_level_module.encoder.")]
    base = weights(Path(tiny_base()))
    assert frozen and all(torch.equal(a[k], base[k]) for k in frozen)  # freeze_backbone kept the Swin weights


def test_finetuned_checkpoint_loads_in_the_loader_and_segments_in_a_workflow(runtime):
    from engine.models.segmentation.mask2former import list_segmenters, load_segmenter
    from engine.models.segmentation.pipeline import segment
    from engine.training.segmentation.dataset import load_image
    from tests.support.flux import CAPTURED

    finetuned_run()
    assert {"shapes-run/best", "shapes-run/last"} <= set(list_segmenters(runtime.folders))
    shutil.copy(workspace() / "input/shapes/images/val/val_0000.jpg", runtime.folders.input_dir / "val_0000.jpg")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "val_0000.jpg"}},
        "2": {"class_type": "Mask2FormerLoader", "inputs": {"model_name": "shapes-run/best"}},
        "3": {"class_type": "SemanticSegment", "inputs": {"segmenter": ["2", 0], "image": ["1", 0], "resolution": 0,
                                                          "precision": "auto", "batch_size": 8, "batching": "group"}},
        "4": {"class_type": "SegmentationToMask", "inputs": {"segmentation": ["3", 0], "class_name": "(none)",
                                                             "more_classes": "1, 2, 3", "threshold": 0.0}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
        "6": {"class_type": "CaptureImage", "inputs": {"images": ["5", 0], "key": "finetuned"}},
    }
    result = execute(runtime, prompt)
    assert result.status == "success", result.errors
    mask = CAPTURED["finetuned"][0, ..., 0]
    image = torch.from_numpy(load_image(workspace() / "input/shapes/images/val/val_0000.jpg")).float()[None] / 255
    [expected] = segment(load_segmenter(finetuned_run().best_dir), [image])
    assert torch.equal(mask > 0.5, expected.label_map[0] > 0)
    truth = np.array(Image.open(workspace() / "input/shapes/annotations/val/val_0000.png"))
    agreement = ((mask.numpy() > 0.5) == (truth > 0))[truth != 255].mean()
    assert agreement > 0.9  # the shapes are found, not just some pixels
