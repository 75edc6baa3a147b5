"""One training forward pass of a FLUX transformer: latents in model space -> predicted velocity, per family.

FLUX.1 packs 2x2 latent pixels into a token with (0, row, column) ids and takes CLIP's pooled embedding; FLUX.2
latents are already one token per pixel with (0, row, column, 0) ids and text ids (0, 0, 0, index). Both get
`timestep = t / 1000` and, where the transformer embeds guidance, the run's guidance for every image, as
diffusers' training scripts pass them. Packing and ids are the sampler's own (engine/sampling), so training and
sampling see the same token layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.sampling import flux2_denoiser as flux2
from engine.sampling.latents import image_ids, pack_latents, text_ids, unpack_latents
from engine.training.flux_lora.loss import expand_sigmas, flow_matching_loss, noisy_latents


@dataclass
class TextBatch:
    """The cached text embeddings of a batch: [B, L, D] and (FLUX.1) CLIP's pooled [B, P]."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


def guidance_vector(transformer: Any, guidance: float, batch: int, device: torch.device) -> torch.Tensor | None:
    if not getattr(transformer.config, "guidance_embeds", False):
        return None
    return torch.full([1], float(guidance), device=device).expand(batch)


def predict(transformer: Any, family: str, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextBatch,
            guidance: float) -> torch.Tensor:
    """The transformer's velocity for `noisy` [B, C, H, W] at `timesteps` [B] (0..1000), as [B, C, H, W]."""
    device, dtype = noisy.device, noisy.dtype
    batch, _, height, width = noisy.shape
    embeds = text.embeds.to(device=device, dtype=dtype)
    timestep = timesteps.to(device) / 1000
    if family == "flux2":
        tokens = flux2.pack(noisy)
        out = transformer(hidden_states=tokens, timestep=timestep,
                          guidance=guidance_vector(transformer, guidance, batch, device),
                          encoder_hidden_states=embeds,
                          txt_ids=flux2.text_ids(embeds.shape[1], device, dtype),
                          img_ids=flux2.grid_ids(height, width, device=device, dtype=dtype), return_dict=False)[0]
        return flux2.unpack(out[:, : tokens.shape[1]], height, width)
    if text.pooled is None:
        raise ValueError("FLUX.1 training needs CLIP's pooled embedding in the text cache")
    tokens = pack_latents(noisy)
    out = transformer(hidden_states=tokens, timestep=timestep,
                      guidance=guidance_vector(transformer, guidance, batch, device),
                      pooled_projections=text.pooled.to(device=device, dtype=dtype), encoder_hidden_states=embeds,
                      txt_ids=text_ids(embeds.shape[1], device, dtype),
                      img_ids=image_ids(height, width, device=device, dtype=dtype), return_dict=False)[0]
    return unpack_latents(out, height, width)


def step_loss(transformer: Any, family: str, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              sigmas: torch.Tensor, text: TextBatch, guidance: float, weighting: str = "none") -> torch.Tensor:
    """The flow-matching loss of one batch (latents and noise on the device, in the compute dtype)."""
    sigma = expand_sigmas(sigmas, latents.ndim, latents.dtype, latents.device)
    prediction = predict(transformer, family, noisy_latents(latents, noise, sigma), timesteps, text, guidance)
    return flow_matching_loss(prediction, noise, latents, sigma, weighting)
