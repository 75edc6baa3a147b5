"""The LoRA training loop shared by the TrainFluxLora node and `fluxgraph train lora`.

Flow: scan the dataset -> cache latents and caption embeddings (text encoders and VAE then leave the device) ->
inject peft adapters into the transformer -> AdamW (8-bit where bitsandbytes is there) with linear warm-up ->
optimizer steps of `grad_accumulation` batches -> LoRA files in models/loras/ (every `save_every` steps and at
the end) and sample images through our sampler -> adapters removed, the transformer as it was.

Exact resume: the batch order of an epoch is a function of (seed, epoch) and each batch's noise and timesteps
come from a generator seeded by (seed, batch number), never from a running stream; the state saved at a step
(`training_state.pt`: LoRA tensors, optimizer, schedule, step, settings) is therefore all a resumed run needs
to reach the uninterrupted run's LoRA bit for bit (on the same device and software). An interrupt (an
exception from `on_step` or `check_interrupt`) saves the state of the last finished step, then propagates.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine.memory.manager import manager_from
from engine.models.common.dtypes import module_dtype
from engine.models.lora.patch import apply_patches, patches_for
from engine.sampling.pipeline import schedule_for
from engine.training.flux_lora import checkpoint as ckpt
from engine.training.flux_lora.adapters import (add_lora, adapter_state, load_adapter_state, lora_file_tensors,
                                                remove_lora, target_modules)
from engine.training.flux_lora.cache import CachedSample, build_cache, encode_text, load_batch, text_modules
from engine.training.flux_lora.config import LoraTrainConfig
from engine.training.flux_lora.dataset import bucket_sizes, epoch_batches, scan_dataset
from engine.training.flux_lora.forward import TextBatch, step_loss
from engine.training.flux_lora.loss import sample_u, timesteps_for
from engine.training.flux_lora.samples import sample_image


@dataclass
class StepReport:
    step: int  # optimizer steps done
    total_steps: int
    loss: float
    learning_rate: float
    seconds: float  # of this step


@dataclass
class TrainEvents:
    """Callbacks; `on_step` may raise (an interrupt): the state is saved at that step, then the error propagates."""

    on_start: Callable[[dict[str, Any]], None] | None = None
    on_step: Callable[[StepReport], None] | None = None
    on_sample: Callable[[int, Any, Path], None] | None = None  # (step, IMAGE, png path)
    check_interrupt: Callable[[], None] | None = None


@dataclass
class TrainResult:
    lora_path: Path
    state_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    last_sample: Any = None  # IMAGE of the last sample, if any
    cache: dict[str, int] = field(default_factory=dict)
    finished: bool = True  # False when max_steps stopped the run before `steps` (resume continues it)


def run_paths(config: LoraTrainConfig) -> tuple[Path, Path, Path]:
    """(LoRA folder, state folder, cache folder) of a run."""
    output = Path(config.output_dir or "models/loras")
    default_state = output.parent / "training" / "flux_lora" / config.output_name
    state = Path(config.state_dir) if config.state_dir else default_state
    cache = Path(config.cache_dir) if config.cache_dir else state / "cache"
    return output, state, cache


def batch_seed(seed: int, batch_number: int) -> int:
    return int(np.random.SeedSequence([seed, batch_number]).generate_state(1)[0])


def make_optimizer(params: list[Any], config: LoraTrainConfig, device: torch.device) -> Any:
    wants_8bit = config.optimizer == "adamw8bit" or (
        config.optimizer == "auto" and device.type == "cuda" and importlib.util.find_spec("bitsandbytes"))
    if wants_8bit:
        try:
            import bitsandbytes as bnb  # noqa: PLC0415 - optional: only where 8-bit AdamW is wanted
        except ImportError:
            raise ValueError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes); use adamw or "
                             "auto") from None
        return bnb.optim.AdamW8bit(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def autocast_dtype(config: LoraTrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class LoraTrainer:
    def __init__(self, config: LoraTrainConfig, model: Any, clip: Any, vae: Any, memory: Any = None,
                 events: TrainEvents | None = None) -> None:
        self.config = config.check()
        self.model, self.clip, self.vae = model, clip, vae
        self.memory = manager_from(memory)
        self.events = events or TrainEvents()
        self.family = getattr(model, "family", "flux1")
        self.output_dir, self.state_dir, self.cache_dir = run_paths(config)
        self.resume_state: dict[str, Any] | None = None
        if config.resume:
            self.resume_state = ckpt.load_state(self.state_dir)
            differences = config.differences(LoraTrainConfig.from_dict(self.resume_state["config"]))
            if differences:
                raise ckpt.CheckpointError(f"cannot resume {self.state_dir}: settings differ from the checkpoint's ("
                                           + "; ".join(differences) + ")")

    # ----- preparation
    def _check_interrupt(self) -> None:
        if self.events.check_interrupt is not None:
            self.events.check_interrupt()

    def _prepare_data(self) -> None:
        config = self.config
        samples = scan_dataset(config.data_dir)
        buckets = bucket_sizes(config.resolution)
        self.entries, self.cache_counts = build_cache(samples, buckets, config.center_crop, self.model, self.clip,
                                                      self.vae, self.memory, self.cache_dir, self._check_interrupt)
        self.sample_text = None
        if config.sample_prompt:
            self.sample_text = encode_text(self.clip, config.sample_prompt, self.memory)
            for module in text_modules(self.clip):
                self.memory.offload(module)
        self.entry_buckets = [e.bucket for e in self.entries]
        self.batches_per_epoch = len(epoch_batches(self.entry_buckets, config.batch_size, config.seed, 0))
        self._epoch_cache: tuple[int, list[list[int]]] = (-1, [])

    def _batch(self, number: int) -> list[CachedSample]:
        epoch, position = divmod(number, self.batches_per_epoch)
        if self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, epoch_batches(self.entry_buckets, self.config.batch_size, self.config.seed,
                                                      epoch))
        return [self.entries[i] for i in self._epoch_cache[1][position]]

    # ----- the run
    def run(self) -> TrainResult:
        self._prepare_data()
        transformer = self.model.transformer
        device = self.memory.device
        requires_grad = {name: p.requires_grad for name, p in transformer.named_parameters()}
        was_training = transformer.training
        devices = [device] if device.type == "cuda" else []
        patches = patches_for(getattr(self.model, "patches", ()), "transformer")
        with torch.random.fork_rng(devices=devices), self.memory.use(transformer), \
                apply_patches(transformer, patches):
            try:
                return self._train(transformer, device)
            finally:
                if self.config.gradient_checkpointing and getattr(transformer, "gradient_checkpointing", False):
                    transformer.disable_gradient_checkpointing()
                remove_lora(transformer)
                for name, param in transformer.named_parameters():
                    param.requires_grad_(requires_grad.get(name, False))
                transformer.train(was_training)

    def _train(self, transformer: Any, device: torch.device) -> TrainResult:
        config, events = self.config, self.events
        names = target_modules(transformer, config.target_names(self.family))
        params = add_lora(transformer, names, config.rank, config.alpha, config.seed)
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.optimizer = make_optimizer(params, config, device)
        warmup = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, s / warmup) if warmup else 1.0)
        self.step, self.losses = 0, []
        if self.resume_state is not None:
            load_adapter_state(transformer, self.resume_state["lora"])
            self.optimizer.load_state_dict(self.resume_state["optimizer"])
            self.scheduler.load_state_dict(self.resume_state["scheduler"])
            self.step, self.losses = int(self.resume_state["step"]), list(self.resume_state["losses"])
        transformer.train()
        end = min(config.steps, config.max_steps) if config.max_steps else config.steps
        result = TrainResult(lora_path=ckpt.lora_file(self.output_dir, config.output_name), state_dir=self.state_dir,
                             steps=self.step, cache=self.cache_counts)
        if events.on_start:
            events.on_start({"images": len(self.entries), "steps": config.steps, "start_step": self.step,
                             "family": self.family, "target_modules": len(names), "device": str(device),
                             "trainable_parameters": sum(p.numel() for p in params), **self.cache_counts})
        start_step = self.step
        try:
            while self.step < end:
                self._check_interrupt()
                started = time.perf_counter()
                loss = self._optimizer_step(transformer, params, device)
                self.step += 1
                self.losses.append(loss)
                report = StepReport(self.step, config.steps, loss, self.optimizer.param_groups[0]["lr"],
                                    time.perf_counter() - started)
                if events.on_step:
                    events.on_step(report)
                if config.save_every and self.step % config.save_every == 0 and self.step < end:
                    self._save_lora(transformer, ckpt.lora_file(self.output_dir, config.output_name, self.step))
                    self._save_state(transformer)
                if config.sample_every and self.step % config.sample_every == 0 and self.step < end:
                    self._sample(result)
        except BaseException:
            if self.step > start_step:
                self._save_state(transformer)  # resume continues from the last finished step
            raise
        result.finished = self.step >= config.steps
        if not result.finished:  # stopped by max_steps: a step file; NAME.safetensors is the finished LoRA only
            result.lora_path = ckpt.lora_file(self.output_dir, config.output_name, self.step)
        self._save_lora(transformer, result.lora_path)
        self._save_state(transformer)
        if self.sample_text is not None:
            self._sample(result)
        result.steps, result.losses = self.step, list(self.losses)
        return result

    def _optimizer_step(self, transformer: Any, params: list[Any], device: torch.device) -> float:
        config = self.config
        dtype = module_dtype(transformer)
        amp = autocast_dtype(config, device)
        total = 0.0
        for micro in range(config.grad_accumulation):
            number = self.step * config.grad_accumulation + micro
            latents, embeds, pooled = load_batch(self._batch(number))
            generator = torch.Generator().manual_seed(batch_seed(config.seed, number))
            noise = torch.randn(latents.shape, generator=generator)
            u = sample_u(config.timestep_sampling, latents.shape[0], generator, config.logit_mean, config.logit_std)
            schedule = schedule_for(self.model, latents, config.sample_steps) \
                if config.timestep_sampling == "shift" else None
            timesteps, sigmas = timesteps_for(u, config.timestep_sampling, schedule)
            text = TextBatch(embeds.to(device), pooled.to(device) if pooled is not None else None)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = step_loss(transformer, self.family, latents.to(device, dtype), noise.to(device, dtype),
                                 timesteps, sigmas, text, config.guidance, config.weighting)
            (loss / config.grad_accumulation).backward()
            total += float(loss.detach()) / config.grad_accumulation
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    # ----- outputs
    def _metadata(self) -> dict[str, str]:
        config = self.config
        settings = {k: v for k, v in config.to_dict().items()
                    if k not in ("data_dir", "output_dir", "state_dir", "cache_dir", "base_dir", "models_dir")}
        return {"fluxgraph.training": json.dumps(settings), "fluxgraph.step": str(self.step),
                "fluxgraph.family": self.family, "ss_network_dim": str(config.rank),
                "ss_network_alpha": str(config.rank)}  # alpha is folded into lora_B: scale 1 for every loader

    def _save_lora(self, transformer: Any, path: Path) -> Path:
        return ckpt.save_lora_file(path, lora_file_tensors(transformer, self.config.rank, self.config.alpha),
                                   self._metadata())

    def _save_state(self, transformer: Any) -> None:
        ckpt.save_state(self.state_dir, {
            "config": self.config.to_dict(), "step": self.step, "lora": adapter_state(transformer),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "losses": list(self.losses)})

    def _sample(self, result: TrainResult) -> None:
        config = self.config
        size = config.sample_size or config.resolution
        path = self.state_dir / "samples" / f"step{self.step:06d}.png"
        image = sample_image(self.model, self.vae, self.sample_text, self.memory, path, width=size, height=size,
                             steps=config.sample_steps, seed=config.seed, guidance=config.guidance)
        result.samples.append(path)
        result.last_sample = image
        if self.events.on_sample:
            self.events.on_sample(self.step, image, path)


def train_lora(config: LoraTrainConfig, model: Any, clip: Any, vae: Any, memory: Any = None,
               events: TrainEvents | None = None) -> TrainResult:
    return LoraTrainer(dataclasses.replace(config), model, clip, vae, memory, events).run()
