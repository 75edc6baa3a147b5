"""FLUX.2 latents as the graph passes them, and what the sampler accepts for each model family.

A FLUX.2 LATENT's `samples` are [B, 128, H/16, W/16] in model space (the FLUX.2 VAE handle patchifies and
normalises, see engine.models.flux2.vae), so the latent format is the identity and there is no patch
padding. A FLUX.1 LATENT is [B, 16, H/8, W/8] raw VAE latents.

Blank latents of the other family (EmptySD3LatentImage / EmptyLatentImage with a FLUX.2 model,
EmptyFlux2LatentImage with FLUX.1) are converted to a blank latent of the same image size; a latent with
content from the other family's VAE is refused with a message saying which VAE and which empty-latent node
to use.
"""

from __future__ import annotations

import torch

from engine.sampling.latents import LatentFormat, fit_latent_channels, latent_format_for

FLUX2_CHANNELS = 128
FLUX2_DOWNSCALE = 16
FLUX2_LATENT = LatentFormat(channels=FLUX2_CHANNELS, scale=1.0, shift=0.0)


def is_flux2(model: object) -> bool:
    return getattr(model, "family", "flux1") == "flux2"


def model_latent_format(model: object) -> LatentFormat:
    return FLUX2_LATENT if is_flux2(model) else latent_format_for(model)


def image_size(samples: torch.Tensor, model: object) -> tuple[int, int]:
    """(width, height) in pixels of a latent of `model`'s family."""
    scale = FLUX2_DOWNSCALE if is_flux2(model) else 8
    return samples.shape[-1] * scale, samples.shape[-2] * scale


def fit_latent_to_model(samples: torch.Tensor, model: object) -> torch.Tensor:
    """The latent the sampler works on for `model` (conversion rules in the module docstring)."""
    flux2 = is_flux2(model)
    channels = samples.shape[1]
    if flux2 and channels == FLUX2_CHANNELS:
        return samples
    if not flux2 and channels != FLUX2_CHANNELS:
        return fit_latent_channels(samples, latent_format_for(model))
    b, _, h, w = samples.shape
    if not torch.count_nonzero(samples):
        if flux2:
            if h % 2 or w % 2:
                raise ValueError(f"a blank latent of {w * 8}x{h * 8} pixels cannot be sampled by FLUX.2, whose "
                                 "sizes are multiples of 16: use EmptyFlux2LatentImage")
            return torch.zeros(b, FLUX2_CHANNELS, h // 2, w // 2, dtype=samples.dtype)
        return torch.zeros(b, latent_format_for(model).channels, h * 2, w * 2, dtype=samples.dtype)
    if flux2:
        raise ValueError(f"latent has {channels} channels: it was encoded by a FLUX.1 (or other) VAE, but this is a "
                         f"FLUX.2 model, which takes [batch, {FLUX2_CHANNELS}, H/16, W/16] latents; encode with the "
                         "FLUX.2 VAE")
    raise ValueError(f"latent has {FLUX2_CHANNELS} channels: it comes from the FLUX.2 VAE, but this is a FLUX.1 "
                     "model; encode with the FLUX.1 VAE (ae.safetensors)")
