"""Sample images while training, through our own sampler (engine/sampling/pipeline.py): euler, the "simple"
schedule of the model's family, the prompt's cached embeddings and the run's guidance. The transformer carries
the live LoRA adapters, so a sample shows the LoRA as trained so far.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.sampling.flux2_latents import FLUX2_CHANNELS, FLUX2_DOWNSCALE, is_flux2
from engine.sampling.pipeline import Guider, RandomNoise, SamplerChoice, sample, schedule_for
from engine.sampling.schedules import scheduler_sigmas
from engine.sampling.vae import decode

FLUX1_CHANNELS, FLUX1_DOWNSCALE = 16, 8


def conditioning(model: Any, text: dict[str, torch.Tensor], guidance: float) -> list:
    """CONDITIONING of cached text tensors ({"embeds": [L, D], "pooled": [P]})."""
    options: dict[str, Any] = {"guidance": float(guidance)}
    if "pooled" in text:
        options["pooled_output"] = text["pooled"][None].float()
    return [[text["embeds"][None].float(), options]]


def empty_latent(model: Any, width: int, height: int) -> torch.Tensor:
    if is_flux2(model):
        return torch.zeros(1, FLUX2_CHANNELS, height // FLUX2_DOWNSCALE, width // FLUX2_DOWNSCALE)
    return torch.zeros(1, FLUX1_CHANNELS, height // FLUX1_DOWNSCALE, width // FLUX1_DOWNSCALE)


def sample_latent(model: Any, text: dict[str, torch.Tensor], memory: Any, *, width: int, height: int, steps: int,
                  seed: int, guidance: float, patches_applied: bool = True) -> torch.Tensor:
    """Raw latents of one image sampled with the transformer as it is now (adapters included). While training,
    the model's own LoRA patches are already applied (`patches_applied`): the sampler must not add them again."""
    bare = dataclasses.replace(model, patches=()) if patches_applied else model
    latent = {"samples": empty_latent(model, width, height)}
    sigmas = scheduler_sigmas("simple", schedule_for(bare, latent["samples"], steps), steps)
    result = sample(Guider(bare, conditioning(model, text, guidance)), SamplerChoice("euler"), sigmas, latent,
                    RandomNoise(int(seed)), memory=memory)
    return result.samples


def sample_image(model: Any, vae: Any, text: dict[str, torch.Tensor], memory: Any, path: Path | None = None,
                 **options: Any) -> torch.Tensor:
    """IMAGE [1, H, W, 3]; also written as a PNG to `path` when given."""
    was_training = model.transformer.training
    model.transformer.eval()
    try:
        image = decode(vae, sample_latent(model, text, memory, **options), memory)
    finally:
        model.transformer.train(was_training)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(path)
    return image
