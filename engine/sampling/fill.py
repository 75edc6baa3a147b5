"""Inpainting and outpainting: the maths behind InpaintModelConditioning, VAEEncodeForInpaint,
SetLatentNoiseMask and DifferentialDiffusion, and the extra input channels of the FLUX.1 Fill model.

Masks are 1 where the image is repainted. CONDITIONING keys (ComfyUI's names):
- `concat_latent_image`: raw VAE latent [B, 16, h, w] of the image with the masked area set to grey;
- `concat_mask`: the mask at pixel size [B, 1, 8h, 8w].
With `noise_order="diffusers"` InpaintModelConditioning also keeps the masked latent's std
(`concat_latent_std`) and marks the LATENT (`fill_noise_order`): the sampler then draws from each item's
seed in FluxFillPipeline's order (image latent sample, starting noise, masked latent sample) and uses
mean + std * eps as the masked latent, as diffusers does; "comfyui" (the default) draws the noise first
and uses the mode.
The Fill transformer (384 input channels = 64 packed latent + 64 packed masked-image latent + 256 packed
mask) reads both on every step: the masked-image latent in model space, the mask folded 8x8 into 64 channels
per latent pixel (FluxFillPipeline's `prepare_mask_latents`), both packed like the latent. Other FLUX
models ignore these keys and inpaint through the LATENT's `noise_mask` alone.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F

from engine.sampling.conditioning import FluxCond, fit_batch, map_options
from engine.sampling.latents import FLUX1_LATENT, pack_latents, pad_to_patch
from engine.sampling.vae import encode, encode_posterior

CONCAT_LATENT = "concat_latent_image"
CONCAT_MASK = "concat_mask"
CONCAT_LATENT_STD = "concat_latent_std"  # diffusers noise order: std of the masked latent's distribution
FILL_NOISE_ORDER = "fill_noise_order"  # LATENT key: "diffusers" asks the sampler for FluxFillPipeline's order
NOISE_ORDERS = ("comfyui", "diffusers")
DIFFERENTIAL_DIFFUSION = "differential_diffusion"  # FluxModel option: DifferentialDiffusion's strength
LATENT_CHANNELS_PACKED = 64  # 16 latent channels x 2x2 patch
VAE_SCALE = 8
log = logging.getLogger("fluxgraph.inpaint")


def mask_batch(mask: Any, what: str = "mask") -> torch.Tensor:
    """MASK [H, W] / [B, H, W] / [B, 1, H, W] -> float [B, 1, H, W] clamped to 0..1."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3, 4) or (mask.ndim == 4 and mask.shape[1] != 1):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{what} must be a MASK [batch, height, width], got {shape}")
    mask = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    return mask.clamp(0.0, 1.0)


def fit_mask_to_pixels(mask: Any, pixels: torch.Tensor, what: str) -> torch.Tensor:
    """The mask resized (bilinear) to the image and matched to its batch: [B, 1, H, W]."""
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        raise ValueError(f"{what}: pixels must be an IMAGE [batch, height, width, channels]")
    mask = mask_batch(mask, f"{what}: mask")
    height, width = pixels.shape[1], pixels.shape[2]
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    batch = pixels.shape[0]
    if mask.shape[0] != batch:
        if mask.shape[0] != 1 and batch != 1:
            raise ValueError(f"{what}: {mask.shape[0]} masks for {batch} images; give one mask or one per image")
    return mask


def crop_to_vae_grid(pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Center-crop image [B, H, W, C] and mask [B, 1, H, W] to multiples of 8 (as VAEEncode crops)."""
    height, width = pixels.shape[1], pixels.shape[2]
    new_h, new_w = height // VAE_SCALE * VAE_SCALE, width // VAE_SCALE * VAE_SCALE
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image of {width}x{height} is smaller than the VAE's {VAE_SCALE}-pixel patch")
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return (pixels[:, top:top + new_h, left:left + new_w], mask[:, :, top:top + new_h, left:left + new_w])


def grey_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RGB pixels with the masked area (mask >= 0.5) set to 0.5 grey: the VAE's zero."""
    keep = (1.0 - mask.round())[:, 0, :, :, None]
    return (pixels[..., :3] - 0.5) * keep + 0.5


def _warn_if_empty(mask: torch.Tensor, what: str) -> None:
    if not bool((mask > 0).any()):
        log.warning("%s: the mask is empty, nothing will be repainted", what)


@torch.no_grad()
def inpaint_model_conditioning(positive: list, negative: list, vae: Any, pixels: torch.Tensor, mask: Any,
                               noise_mask: bool, memory: Any,
                               noise_order: str = "comfyui") -> tuple[list, list, dict]:
    """InpaintModelConditioning: the masked-image latent and mask on both conditionings, and the LATENT of
    the whole image (with the mask as its noise_mask when `noise_mask`). See the module doc for noise_order."""
    what = "InpaintModelConditioning"
    if noise_order not in NOISE_ORDERS:
        raise ValueError(f"{what}: noise_order {noise_order!r} is not one of {list(NOISE_ORDERS)}")
    mask = fit_mask_to_pixels(mask, pixels, what)
    pixels, mask = crop_to_vae_grid(pixels, mask)
    _warn_if_empty(mask, what)
    masked = grey_out(pixels.float(), mask)
    concat_latent, concat_std = encode_posterior(vae, masked, memory)
    latent: dict[str, Any] = {"samples": encode(vae, pixels, memory)}
    if noise_mask:
        latent["noise_mask"] = mask
    options = {CONCAT_LATENT: concat_latent, CONCAT_MASK: mask}
    if noise_order == "diffusers":
        options[CONCAT_LATENT_STD] = concat_std
        latent[FILL_NOISE_ORDER] = noise_order
    return map_options(positive, **options), map_options(negative, **options), latent


def sample_fill_latents(conditioning: list | None, eps: torch.Tensor) -> list | None:
    """Entries carrying a masked latent's std get mean + std * eps as their masked latent (diffusers order)."""
    if conditioning is None:
        return None
    out = []
    for tensor, options in conditioning:
        std = options.get(CONCAT_LATENT_STD)
        if std is not None and options.get(CONCAT_LATENT) is not None:
            options = {key: value for key, value in options.items() if key != CONCAT_LATENT_STD}
            options[CONCAT_LATENT] = options[CONCAT_LATENT] + std * eps
        out.append([tensor, options])
    return out


@torch.no_grad()
def vae_encode_for_inpaint(vae: Any, pixels: torch.Tensor, mask: Any, grow_mask_by: int, memory: Any) -> dict:
    """VAEEncodeForInpaint: the image with the masked area greyed out, encoded, with the mask grown by
    `grow_mask_by` pixels (a square dilation) and binarised as its noise_mask."""
    what = "VAEEncodeForInpaint"
    mask = fit_mask_to_pixels(mask, pixels, what)
    pixels, mask = crop_to_vae_grid(pixels, mask)
    _warn_if_empty(mask, what)
    grown = mask.round()
    if grow_mask_by > 0:
        height, width = grown.shape[-2:]
        kernel = torch.ones(1, 1, grow_mask_by, grow_mask_by)
        grown = F.conv2d(grown, kernel, padding=grow_mask_by // 2).clamp(0.0, 1.0)[..., :height, :width]
    samples = encode(vae, grey_out(pixels.float(), mask), memory)
    return {"samples": samples, "noise_mask": grown.round()}


def set_latent_noise_mask(samples: dict, mask: Any) -> dict:
    """SetLatentNoiseMask: a copy of the LATENT with `mask` as its noise_mask (resized when sampling)."""
    if not isinstance(samples, dict) or not isinstance(samples.get("samples"), torch.Tensor):
        raise ValueError("SetLatentNoiseMask: samples must be a LATENT (a dict with 'samples')")
    return {**samples, "noise_mask": mask_batch(mask, "SetLatentNoiseMask: mask")}


def step_mask_function(model: Any, mask: torch.Tensor | None, sigmas: torch.Tensor,
                       sigma_min: float) -> Callable[[float], torch.Tensor | None]:
    """The noise mask to use at each sigma. Plain inpainting: the mask itself. With DifferentialDiffusion,
    a pixel is repainted from the step where the normalised time (sigma - sigma_end) / (sigma_start -
    sigma_end) falls to its mask value, so soft mask edges blend gradually; `strength` < 1 mixes the
    thresholded mask with the soft one."""
    strength = model.option(DIFFERENTIAL_DIFFUSION) if hasattr(model, "option") else None
    if mask is None or strength is None:
        return lambda sigma: mask
    sigma_from = float(sigmas[0])
    sigma_to = max(float(sigma_min), float(sigmas[-1]))
    span = sigma_from - sigma_to
    strength = float(strength)

    def at(sigma: float) -> torch.Tensor:
        threshold = (float(sigma) - sigma_to) / span if span > 0 else 0.0
        binary = (mask >= threshold).to(mask.dtype)
        return binary if strength >= 1.0 else strength * binary + (1.0 - strength) * mask

    return at


class FillInputs:
    """Transformer input hook of the Fill model: appends the packed masked-image latent and mask channels
    to the image tokens of every conditioning entry (cached per entry and size)."""

    def __init__(self, extra_channels: int) -> None:
        self.extra_channels = extra_channels
        self._cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, cond: FluxCond, kwargs: dict, tokens: torch.Tensor) -> None:
        hidden = kwargs["hidden_states"]
        if hidden.shape[-1] != LATENT_CHANNELS_PACKED:
            raise ValueError("FLUX Fill takes no reference images (its image tokens carry the inpaint channels)")
        key = (id(cond), tuple(kwargs["img_ids"].shape), hidden.shape[0], hidden.device, hidden.dtype)
        if key not in self._cache:
            self._cache[key] = self._extra(cond, kwargs["img_ids"], hidden)
        kwargs["hidden_states"] = torch.cat([hidden, self._cache[key]], dim=-1)

    def _extra(self, cond: FluxCond, img_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        rows, cols = int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1
        height, width = rows * 2, cols * 2  # latent size, padded to the patch
        batch = hidden.shape[0]
        extra = cond.extra or {}
        latent, mask = extra.get(CONCAT_LATENT), extra.get(CONCAT_MASK)
        if latent is None:  # no InpaintModelConditioning: nothing kept, everything to fill
            latent = torch.zeros(1, 16, height, width)
        if mask is None:
            mask = torch.ones(1, 1, height * VAE_SCALE, width * VAE_SCALE)
        latent = FLUX1_LATENT.process_in(fit_batch(latent.float().cpu(), batch, "inpaint image latent"))
        latent = _fit_latent(latent, height, width)
        mask = mask_batch(mask.cpu(), "inpaint mask")
        if tuple(mask.shape[-2:]) != (height * VAE_SCALE, width * VAE_SCALE):
            mask = F.interpolate(mask, size=(height * VAE_SCALE, width * VAE_SCALE), mode="bilinear",
                                 align_corners=False)
        mask = fit_batch(mask, batch, "inpaint mask")
        folded = fold_mask(mask)
        packed = torch.cat([pack_latents(latent), pack_latents(folded)], dim=-1)
        if packed.shape[-1] != self.extra_channels:
            raise ValueError(f"this Fill model takes {self.extra_channels} extra input channels, the inpaint "
                             f"conditioning gives {packed.shape[-1]}")
        return packed.to(hidden.device, hidden.dtype)


def fold_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, 8h, 8w] -> [B, 64, h, w]: each latent pixel gets its 8x8 mask pixels as channels (dy * 8 + dx)."""
    b, _, height, width = mask.shape
    h, w = height // VAE_SCALE, width // VAE_SCALE
    folded = mask[:, 0].reshape(b, h, VAE_SCALE, w, VAE_SCALE).permute(0, 2, 4, 1, 3)
    return folded.reshape(b, VAE_SCALE * VAE_SCALE, h, w)


def _fit_latent(latent: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The masked-image latent on the sampled latent's (patch-padded) grid."""
    if tuple(latent.shape[-2:]) != (height, width):
        latent, _ = pad_to_patch(latent)
    if tuple(latent.shape[-2:]) != (height, width):
        raise ValueError(f"the inpaint image latent is {tuple(latent.shape[-2:])} but the sampled latent is "
                         f"{(height, width)}: use InpaintModelConditioning's latent output (same image)")
    return latent


def fill_hook(transformer: Any) -> FillInputs | None:
    """The Fill hook for a transformer with more input channels than the latent, else None."""
    in_channels = int(getattr(transformer.config, "in_channels", LATENT_CHANNELS_PACKED))
    if in_channels <= LATENT_CHANNELS_PACKED:
        return None
    return FillInputs(in_channels - LATENT_CHANNELS_PACKED)
