"""The fine-tuning loop shared by the TrainSegmenter node and `fluxgraph train segmenter`.

Exact resume: the sample order of an epoch and each sample's augmentation come from generators seeded by
(seed, epoch) and (seed, epoch, sample), never from a running stream; torch's global generator (the losses
sample points with it, new class heads draw their init from it) is saved in each checkpoint and restored.
So a run resumed from last/ (saved at an epoch end, every `save_every` steps, or when interrupted) reaches
the weights of the uninterrupted run. The caller's torch random state is restored when training returns.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine.models.segmentation.mask2former import Segmenter, load_segmenter
from engine.models.segmentation.pipeline import normalisation_table, pixel_values
from engine.training.segmentation import checkpoint as ckpt
from engine.training.segmentation.augment import AugmentSettings, augment
from engine.training.segmentation.config import TrainConfig
from engine.training.segmentation.dataset import DatasetInfo, load_sample, validate_dataset
from engine.training.segmentation.metrics import evaluate
from engine.training.segmentation.model_setup import (build_training_model, freeze_backbone, loss_targets,
                                                      parameter_groups)
from engine.training.segmentation.schedule import lr_factor


@dataclass
class StepReport:
    step: int  # optimizer steps done
    total_steps: int
    epoch: int  # 1-based
    epochs: int
    loss: float
    learning_rate: float
    images_per_second: float


@dataclass
class TrainEvents:
    """Callbacks; `on_step` may raise (an interrupt): last/ is saved at that step, then the error propagates."""

    on_start: Callable[[dict[str, Any]], None] | None = None
    on_step: Callable[[StepReport], None] | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    check_interrupt: Callable[[], None] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    best_dir: Path
    last_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_miou: float = -1.0
    steps: int = 0
    stopped_early: bool = False


def resolve_device(config: TrainConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """None: fp32 training. Mixed precision runs on a GPU only."""
    if config.precision == "fp32" or (config.precision == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError(f"precision {config.precision} needs a CUDA device; this run is on {device.type} (use "
                         "fp32 or auto)")
    if config.precision == "fp16" or (config.precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


class _Run:
    """One training run's state; `Trainer.run` drives it."""

    def __init__(self, config: TrainConfig, events: TrainEvents) -> None:
        self.config = config.check()
        self.events = events
        self.device = resolve_device(config)
        self.amp_dtype = autocast_dtype(config, self.device)
        self.run_dir = Path(config.output_dir)
        self.resume_state: dict[str, Any] | None = None
        if config.resume:
            self._load_resume_state()
        base = load_segmenter(Path(config.base_model) if not self.resume_state
                              else ckpt.resume_folder(config.resume))
        self.info: DatasetInfo = validate_dataset(config.data_dir, base.labels, config.reduce_labels)
        self.preprocessing = base.preprocessing
        if self.resume_state is not None:
            if tuple(self.resume_state["classes"]) != self.info.classes:
                raise ckpt.CheckpointError(f"the dataset's classes {list(self.info.classes)[:6]} differ from the "
                                           f"checkpoint's {list(self.resume_state['classes'])[:6]}")
            self.model, self.head_replaced = base.model, False
        else:
            torch.manual_seed(config.seed)
            self.model, self.head_replaced = build_training_model(base.model, self.info.classes, config.num_points)
        self.model.to(self.device)
        if config.freeze_backbone:
            freeze_backbone(self.model)
        crop = config.crop_size or self.preprocessing.shortest_edge
        self.augment = AugmentSettings(self.preprocessing.shortest_edge, crop, config.scale_min, config.scale_max,
                                       config.max_category_ratio, config.flip)
        self.table = torch.from_numpy(normalisation_table(self.preprocessing)).to(self.device)
        self.batches_per_epoch = math.ceil(len(self.info.train) / config.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.grad_accumulation)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, config.learning_rate, config.weight_decay,
                                                            config.backbone_lr_multiplier))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(
            step, self.total_steps, schedule=config.schedule, warmup_steps=config.warmup_steps,
            power=config.poly_power))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch, self.batch_group, self.step = 0, 0, 0
        self.best_miou, self.history = -1.0, []
        self.epoch_losses: list[float] = []  # losses of the current epoch's steps (the summary's mean)
        self.pending_epoch: dict[str, Any] | None = None  # a trained epoch whose evaluation was interrupted
        if self.resume_state is not None:
            self._restore(self.resume_state)

    # ----- resume
    def _load_resume_state(self) -> None:
        folder = ckpt.resume_folder(self.config.resume)
        state = ckpt.load_training_state(folder)
        saved = TrainConfig.from_dict(state["config"])
        differences = self.config.differences(saved)
        if differences:
            raise ckpt.CheckpointError(f"cannot resume {folder}: settings differ from the checkpoint's ("
                                       + "; ".join(differences) + ")")
        self.resume_state = state

    def _restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_group, self.step = int(state["epoch"]), int(state["batch_group"]), int(state["step"])
        self.best_miou = float(state.get("best_miou", -1.0))
        self.history = list(state.get("history", []))
        self.epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
        self.pending_epoch = state.get("pending_epoch")

    def _rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def save_last(self) -> None:
        state = {"config": self.config.to_dict(), "epoch": self.epoch, "batch_group": self.batch_group,
                 "step": self.step, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                 "rng": self._rng_state(), "best_miou": self.best_miou, "history": self.history,
                 "epoch_losses": self.epoch_losses, "pending_epoch": self.pending_epoch,
                 "classes": list(self.info.classes)}
        ckpt.save_model_folder(self.run_dir / "last", self.model, self.preprocessing,
                               metrics=self.history[-1] if self.history else None, state=state)

    # ----- data
    def batch(self, epoch: int, indices: np.ndarray) -> tuple[Any, list[Any], list[Any]]:
        images, labels, contents = [], [], []
        for index in indices:
            image, label = load_sample(self.info.train[int(index)], self.info.reduce_labels)
            rng = np.random.default_rng([self.config.seed, epoch, int(index)])
            image, label, content = augment(image, label, rng, self.augment)
            images.append(torch.from_numpy(image))
            labels.append(torch.from_numpy(label.astype(np.int64)))
            contents.append(content)
        values = pixel_values(torch.stack(images), self.table)
        for k, (height, width) in enumerate(contents):  # the processor pads after normalising: zeros
            values[k, :, height:, :] = 0
            values[k, :, :, width:] = 0
        mask_labels, class_labels = loss_targets(torch.stack(labels).to(self.device))
        return values, mask_labels, class_labels

    # ----- evaluation
    def segmenter(self) -> Segmenter:
        return Segmenter(model=self.model, labels=self.info.classes, preprocessing=self.preprocessing,
                         config_name=self.run_dir.name, source=str(self.run_dir))

    def evaluate(self) -> dict[str, Any]:
        self.model.eval()
        try:
            return evaluate(self.segmenter(), self.info.val, reduce_labels=self.info.reduce_labels,
                            module=self.model, device=self.device, batch_size=self.config.eval_batch_size,
                            check_interrupt=self.events.check_interrupt)
        finally:
            self.model.train()
            if self.config.freeze_backbone:
                self.model.model.pixel_level_module.encoder.eval()


class Trainer:
    def __init__(self, config: TrainConfig, events: TrainEvents | None = None) -> None:
        self.config = config
        self.events = events or TrainEvents()

    def run(self) -> TrainResult:
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # the caller's random state comes back afterwards
            return self._run(_Run(self.config, self.events))

    def _run(self, run: _Run) -> TrainResult:
        config, events = run.config, self.events
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if run.resume_state is not None:
            run._set_rng_state(run.resume_state["rng"])
        if events.on_start:
            events.on_start({"train_images": len(run.info.train), "val_images": len(run.info.val),
                             "classes": list(run.info.classes), "head_replaced": run.head_replaced,
                             "steps": run.total_steps, "start_step": run.step, "device": str(run.device)})
        if config.evaluate_first and not run.history:
            self._record_epoch(run, 0, float("nan"), 0.0)
        if run.pending_epoch is not None:  # interrupted while evaluating: evaluate that epoch first
            self._record_epoch(run, **run.pending_epoch)
        run.model.train()
        if config.freeze_backbone:
            run.model.model.pixel_level_module.encoder.eval()
        stopped = False
        while run.epoch < config.epochs and not stopped:
            stopped = self._train_epoch(run)
        return TrainResult(run_dir=run.run_dir, best_dir=run.run_dir / "best", last_dir=run.run_dir / "last",
                           history=run.history, best_miou=run.best_miou, steps=run.step, stopped_early=stopped)

    def _train_epoch(self, run: _Run) -> bool:
        config, events = run.config, self.events
        epoch, started = run.epoch, time.perf_counter()
        order = epoch_order(config.seed, epoch, len(run.info.train))
        batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        groups = [batches[i:i + config.grad_accumulation] for i in range(0, len(batches), config.grad_accumulation)]
        while run.batch_group < len(groups):
            step_start = time.perf_counter()
            group = groups[run.batch_group]
            loss = self._optimizer_step(run, epoch, group)
            run.epoch_losses.append(loss)
            run.batch_group += 1
            run.step += 1
            images = sum(len(b) for b in group)
            report = StepReport(run.step, run.total_steps, epoch + 1, config.epochs, loss,
                                run.optimizer.param_groups[-1]["lr"], images / (time.perf_counter() - step_start))
            if run.batch_group == len(groups):
                break  # the epoch's end saves last/ after evaluating
            try:
                if events.on_step:
                    events.on_step(report)
            except BaseException:
                run.save_last()  # an interrupt keeps everything done so far; resume continues from here
                raise
            if config.save_every and run.step % config.save_every == 0:
                run.save_last()
            if config.max_steps and run.step >= config.max_steps:
                run.save_last()
                return True
        mean_loss = float(np.mean(run.epoch_losses)) if run.epoch_losses else float("nan")
        run.epoch, run.batch_group, run.epoch_losses = epoch + 1, 0, []
        run.pending_epoch = {"epoch": epoch + 1, "mean_loss": mean_loss, "seconds": time.perf_counter() - started}
        self._record_epoch(run, **run.pending_epoch)
        if events.on_step:
            events.on_step(report)  # the epoch's last step, reported once its checkpoint is safe
        return bool(config.max_steps and run.step >= config.max_steps)

    def _optimizer_step(self, run: _Run, epoch: int, group: list[np.ndarray]) -> float:
        total_images = sum(len(b) for b in group)
        loss_sum = 0.0
        for indices in group:
            values, mask_labels, class_labels = run.batch(epoch, indices)
            with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32,
                                enabled=run.amp_dtype is not None):
                output = run.model(pixel_values=values, mask_labels=mask_labels, class_labels=class_labels)
            loss = output.loss * (len(indices) / total_images)
            run.scaler.scale(loss).backward()
            loss_sum += float(loss.detach())
        if run.config.max_grad_norm:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad],
                                           run.config.max_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        return loss_sum

    def _record_epoch(self, run: _Run, epoch: int, mean_loss: float, seconds: float) -> None:
        try:
            metrics = run.evaluate()
        except BaseException:
            if epoch > 0:
                run.save_last()  # the epoch's training is kept; a resumed run evaluates it first
            raise
        run.pending_epoch = None
        summary = {"epoch": epoch, "epochs": run.config.epochs, "step": run.step,
                   "train_loss": None if math.isnan(mean_loss) else round(mean_loss, 6),
                   "learning_rate": run.optimizer.param_groups[-1]["lr"], "val_miou": metrics["miou"],
                   "val_pixel_accuracy": metrics["pixel_accuracy"], "per_class_iou": metrics["per_class_iou"],
                   "seconds": round(seconds, 3)}
        improved = epoch > 0 and metrics["miou"] > run.best_miou
        if improved:
            run.best_miou = metrics["miou"]
        summary["best_miou"] = run.best_miou if run.best_miou >= 0 else None
        run.history.append(summary)
        if improved:
            ckpt.save_model_folder(run.run_dir / "best", run.model, run.preprocessing, metrics=summary)
        if epoch > 0:
            run.save_last()
        ckpt.write_history(run.run_dir, run.history)
        if self.events.on_epoch:
            self.events.on_epoch(summary)


def train(config: TrainConfig, events: TrainEvents | None = None) -> TrainResult:
    return Trainer(config, events).run()
