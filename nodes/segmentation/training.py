"""TrainSegmenter: fine-tune a Mask2Former on a dataset folder under input/; the checkpoints land in
models/segmentation/<output_name>/best and /last, which Mask2FormerLoader lists.

The node reports each optimizer step as progress (the websocket's `progress` message) and sends
`fluxgraph.training` (step, loss, learning rate) and `fluxgraph.training_epoch` (val mIoU, per-class IoU)
messages. An interrupt stops at the next step after saving last/; queue the node again with `resume` on to
continue exactly where it stopped. Nothing heavy is imported until the node runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.file_digest import folder_fingerprint
from engine.core.folders import contained_path
from engine.core.schema import Boolean, Combo, Float, Int, NodeResult, Output, String, node
from engine.core.types import SEGMENTER, STRING
from engine.models.segmentation.mask2former import list_segmenters, load_segmenter
from engine.training.segmentation.checkpoint import STATE_FILE
from engine.training.segmentation.config import TrainConfig

SCHEDULES = ["poly", "cosine"]
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
DATASET_SEARCH_DEPTH = 2  # input/NAME and input/GROUP/NAME


def _pytorch_segmenters(folders: Any) -> list[str]:
    if folders is None:
        return []
    return list_segmenters(folders)


def dataset_choices(folders: Any) -> list[str]:
    """Folders under input/ (two levels deep) that hold images/ and annotations/."""
    if folders is None or not folders.input_dir.is_dir():
        return []
    found, frontier = [], [folders.input_dir]
    for _ in range(DATASET_SEARCH_DEPTH):
        next_frontier = []
        for parent in frontier:
            for child in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (child / "images").is_dir() and (child / "annotations").is_dir():
                    found.append(child.relative_to(folders.input_dir).as_posix())
                else:
                    next_frontier.append(child)
        frontier = next_frontier
    return sorted(found)


def _dataset_changed(dataset: str, folders: Any = None, **_: Any) -> str:
    """The dataset's files (names, sizes, times) are part of the cache key: editing the dataset retrains."""
    if folders is None:
        return dataset
    return folder_fingerprint(contained_path(folders.input_dir, dataset))


def run_folder(folders: Any, output_name: str) -> Path:
    name = output_name.strip().strip("/")
    if not name:
        raise ValueError("output_name is empty: name the folder under models/segmentation/ to train into")
    root = folders.models_dir / "segmentation"
    root.mkdir(parents=True, exist_ok=True)
    return contained_path(root, name)


@node("TrainSegmenter", category="segmentation/training", display_name="Train Segmenter (Mask2Former)",
      inputs=[Combo("base_model", _pytorch_segmenters,
                    tooltip="The Mask2Former to start from (models/segmentation/); a dataset with another class "
                            "count gets a new class head, everything else starts from these weights"),
              Combo("dataset", dataset_choices,
                    tooltip="A folder under input/ with images/{train,val} and annotations/{train,val} (PNG label "
                            "maps, 255 = ignored) and optionally classes.json"),
              String("output_name", "finetuned-segmenter",
                     tooltip="Run folder under models/segmentation/: best/ and last/ checkpoints are written there"),
              Int("epochs", 10, min=1, max=10000),
              Int("batch_size", 8, min=1, max=256),
              Float("learning_rate", 0.0001, min=0.0000001, max=0.5, step=0.00001, round=False),
              Combo("schedule", SCHEDULES, default="poly", tooltip="Decay after warm-up: polynomial (power 0.9) "
                                                                   "or cosine"),
              Int("warmup_steps", 0, min=0, max=100000, tooltip="Optimizer steps of linear warm-up"),
              Boolean("freeze_backbone", False, tooltip="Train only the pixel decoder, transformer decoder and "
                                                        "heads"),
              Int("grad_accumulation", 1, min=1, max=256, tooltip="Batches per optimizer step"),
              Int("crop_size", 0, min=0, max=4096, step=32,
                  tooltip="Square training crop (0: the base model's short side)"),
              Combo("precision", PRECISIONS, default="auto",
                    tooltip="auto: bf16 mixed precision on a GPU (fp16 where bf16 is missing), fp32 on the CPU"),
              # a training seed stays fixed between queues (no randomize-after-generate widget)
              Int("seed", 0, min=0, max=0xFFFFFFFF, extra={"control_after_generate": False}),
              Boolean("resume", False, tooltip="Continue the run in output_name from its last/ checkpoint "
                                               "(same settings)"),
              Float("weight_decay", 0.05, min=0.0, max=0.99, step=0.001, optional=True),
              Boolean("reduce_labels", False, optional=True,
                      tooltip="ADE20K's raw label files: 0 is 'unlabelled' and 1..N are the classes"),
              Int("num_points", 0, min=0, max=1000000, optional=True,
                  tooltip="Points sampled per mask by the losses (0: the base model's setting, 12544)")],
      outputs=[Output(SEGMENTER, name="segmenter"), Output(STRING, name="model_name")],
      output_node=True, is_changed=_dataset_changed,
      description="Fine-tunes a Mask2Former semantic segmenter (AdamW, warm-up + poly/cosine decay, the reference "
                  "augmentations and Mask2Former's losses) and evaluates val mIoU after each epoch. Outputs the "
                  "best checkpoint and its name for Mask2FormerLoader.")
def train_segmenter(ctx: Any, base_model: str, dataset: str, output_name: str, epochs: int, batch_size: int,
                    learning_rate: float, schedule: str, warmup_steps: int, freeze_backbone: bool,
                    grad_accumulation: int, crop_size: int, precision: str, seed: int, resume: bool,
                    weight_decay: float = 0.05, reduce_labels: bool = False, num_points: int = 0):
    from engine.training.segmentation.trainer import TrainEvents, train  # noqa: PLC0415 - loads torch

    folders = ctx.folders
    run_dir = run_folder(folders, output_name)
    if not resume and (run_dir / "last" / STATE_FILE).is_file():
        raise ValueError(f"models/segmentation/{output_name} already holds a training run; turn resume on to "
                         "continue it, or choose another output_name")
    config = TrainConfig(
        data_dir=str(contained_path(folders.input_dir, dataset)), output_dir=str(run_dir),
        base_model=str(folders.model_path("segmentation", base_model)), epochs=int(epochs),
        batch_size=int(batch_size), grad_accumulation=int(grad_accumulation), learning_rate=float(learning_rate),
        weight_decay=float(weight_decay), schedule=schedule, warmup_steps=int(warmup_steps),
        freeze_backbone=bool(freeze_backbone), precision=precision, crop_size=int(crop_size), seed=int(seed),
        reduce_labels=bool(reduce_labels), num_points=int(num_points), resume=str(run_dir) if resume else "")
    if ctx.models is not None and hasattr(ctx.models, "offload_all"):
        ctx.models.offload_all()  # training wants the whole device

    def on_step(report: Any) -> None:
        ctx.send("fluxgraph.training", {"step": report.step, "total_steps": report.total_steps,
                                        "epoch": report.epoch, "epochs": report.epochs, "loss": report.loss,
                                        "learning_rate": report.learning_rate,
                                        "images_per_second": report.images_per_second})
        ctx.progress(report.step, report.total_steps)  # raises Interrupted when the user interrupts

    events = TrainEvents(on_start=lambda info: ctx.send("fluxgraph.training_start", info), on_step=on_step,
                         on_epoch=lambda summary: ctx.send("fluxgraph.training_epoch", summary),
                         check_interrupt=ctx.check_interrupt)
    result = train(config, events)
    chosen = result.best_dir if (result.best_dir / "config.json").is_file() else result.last_dir
    name = chosen.relative_to(folders.models_dir / "segmentation").as_posix()
    lines = [f"epoch {h['epoch']}: loss {h['train_loss']}, val mIoU {h['val_miou']:.4f}" for h in result.history]
    lines.append(f"saved {name} (best val mIoU {result.best_miou:.4f}, {result.steps} steps)")
    return NodeResult(outputs=(load_segmenter(chosen), name), ui={"text": lines})


NODES = [train_segmenter]
