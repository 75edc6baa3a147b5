"""Structural control of FLUX.1 by a control image's latent: the Depth and Canny models (full or as a control
LoRA) and ComfyUI's InstructPixToPixConditioning, SetFirstSigma.

InstructPixToPixConditioning VAE-encodes the control image (posterior mode, as VAEEncode) and stores the raw
latent as `concat_latent_image` on every positive and negative entry; its LATENT output is zeros of that size.
A transformer whose image input is 128 channels wide (Depth/Canny dev, or dev with a control LoRA, which
widens `img_in`) then reads, on every step, the packed latent tokens followed on the channel dim by the packed
control latent in model space, as diffusers' FluxControlPipeline concatenates them (64 + 64 = 128). A control
latent of another size is resized to the sampled latent (centre crop to its aspect, bilinear), a missing one
is a zero latent: ComfyUI's behaviour for these models.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine.sampling.conditioning import FluxCond, fit_batch, map_options
from engine.sampling.fill import CONCAT_LATENT, LATENT_CHANNELS_PACKED, crop_to_vae_grid
from engine.sampling.latents import FLUX1_LATENT, pack_latents
from engine.sampling.vae import encode

CONTROL_IN_CHANNELS = 2 * LATENT_CHANNELS_PACKED


@torch.no_grad()
def instruct_pix_to_pix_conditioning(positive: list, negative: list, vae: Any, pixels: torch.Tensor,
                                     memory: Any) -> tuple[list, list, dict]:
    """InstructPixToPixConditioning: the image's latent on both conditionings, and a zero LATENT of its size."""
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        raise ValueError("InstructPixToPixConditioning: pixels must be an IMAGE [batch, height, width, channels]")
    pixels, _ = crop_to_vae_grid(pixels, torch.zeros(pixels.shape[0], 1, pixels.shape[1], pixels.shape[2]))
    latent = encode(vae, pixels[..., :3], memory)
    return (map_options(positive, **{CONCAT_LATENT: latent}), map_options(negative, **{CONCAT_LATENT: latent}),
            {"samples": torch.zeros_like(latent)})


def set_first_sigma(sigmas: Any, sigma: float) -> torch.Tensor:
    """SetFirstSigma: a copy of the schedule with its first sigma replaced."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).clone()
    if sigmas.numel() == 0:
        raise ValueError("SetFirstSigma: sigmas is empty")
    sigmas[0] = float(sigma)
    return sigmas


def fit_control_latent(latent: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A raw latent [B, 16, h, w] on a (height, width) grid: centre-cropped to its aspect, then bilinear."""
    if tuple(latent.shape[-2:]) == (height, width):
        return latent
    h, w = latent.shape[-2:]
    if h * width != w * height:  # crop to the target's aspect first, keeping the middle
        if w * height > h * width:
            new_w = max(1, round(h * width / height))
            left = (w - new_w) // 2
            latent = latent[..., left:left + new_w]
        else:
            new_h = max(1, round(w * height / width))
            top = (h - new_h) // 2
            latent = latent[..., top:top + new_h, :]
    return F.interpolate(latent, size=(height, width), mode="bilinear", align_corners=False)


class ControlLatentInputs:
    """Transformer input hook of a 128-channel FLUX.1 (Depth/Canny): appends the packed control latent of each
    conditioning entry to the image tokens (cached per entry and size)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, cond: FluxCond, kwargs: dict, tokens: torch.Tensor) -> None:
        hidden = kwargs["hidden_states"]
        if hidden.shape[-1] != LATENT_CHANNELS_PACKED:
            raise ValueError("FLUX Depth/Canny takes no reference images (its image tokens carry the control "
                             "image's latent)")
        key = (id(cond), tuple(kwargs["img_ids"].shape), hidden.shape[0], hidden.device, hidden.dtype)
        if key not in self._cache:
            self._cache[key] = self._control(cond, kwargs["img_ids"], hidden)
        kwargs["hidden_states"] = torch.cat([hidden, self._cache[key]], dim=-1)

    @staticmethod
    def _control(cond: FluxCond, img_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        rows, cols = int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1
        height, width = rows * 2, cols * 2  # latent size, padded to the patch
        latent = (cond.extra or {}).get(CONCAT_LATENT)
        if latent is None:
            latent = torch.zeros(1, 16, height, width)
        latent = fit_control_latent(fit_batch(latent.float().cpu(), hidden.shape[0], "control image latent"),
                                    height, width)
        return pack_latents(FLUX1_LATENT.process_in(latent)).to(hidden.device, hidden.dtype)


def image_input_width(transformer: Any) -> int:
    """Input channels of the image embedder as it is now (a control LoRA widens it while applied)."""
    embedder = getattr(transformer, "x_embedder", None)
    if embedder is not None and hasattr(embedder, "in_features"):
        return int(embedder.in_features)
    return int(getattr(transformer.config, "in_channels", LATENT_CHANNELS_PACKED))


def control_latent_hook(transformer: Any) -> ControlLatentInputs | None:
    """The control-latent hook for a transformer whose image input is 128 wide, else None."""
    return ControlLatentInputs() if image_input_width(transformer) == CONTROL_IN_CHANNELS else None
