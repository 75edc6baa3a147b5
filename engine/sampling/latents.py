"""Latent layout for FLUX: the model-space mapping, 2x2 patch packing and the position ids.

Packing and ids follow diffusers' FluxPipeline (`_pack_latents`, `_unpack_latents`,
`_prepare_latent_image_ids`) so that the same transformer sees the same tokens in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# FLUX.1 packs 2x2 latent pixels into one token; the VAE downsamples 8x, so one token covers 16x16 pixels.
PATCH = 2
VAE_DOWNSCALE = 8
PIXELS_PER_TOKEN_SIDE = PATCH * VAE_DOWNSCALE
# The largest image we accept: 4 megapixels (2048x2048), beyond which FLUX.1 was never trained and the
# attention memory explodes.
MAX_PIXELS = 4 * 1024 * 1024


@dataclass(frozen=True)
class LatentFormat:
    """How raw VAE latents map into the space the transformer was trained on."""

    channels: int = 16
    scale: float = 0.3611
    shift: float = 0.1159

    def process_in(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.shift) * self.scale

    def process_out(self, model_space: torch.Tensor) -> torch.Tensor:
        return model_space / self.scale + self.shift


FLUX1_LATENT = LatentFormat()


def latent_format_for(model: object) -> LatentFormat:
    family = getattr(model, "family", "flux1")
    if family != "flux1":
        raise NotImplementedError(f"no latent format for model family {family!r} (only 'flux1' is supported)")
    return FLUX1_LATENT


def check_image_size(width: int, height: int, multiple: int = PIXELS_PER_TOKEN_SIDE) -> str | None:
    """None when (width, height) is usable, otherwise the reason, for a validation error."""
    if width % multiple or height % multiple:
        return f"width and height must be multiples of {multiple}, got {width}x{height}"
    if width * height > MAX_PIXELS:
        return (f"{width}x{height} is {width * height / 1e6:.2f} megapixels; FLUX supports at most "
                f"{MAX_PIXELS / 1e6:.2f} megapixels (e.g. 2048x2048)")
    return None


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)*(W/2), C*4], tokens in row-major order, channels-then-2x2 inside a token."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents`; `height`/`width` are the latent (not pixel) sizes."""
    b, _, dim = tokens.shape
    c = dim // (PATCH * PATCH)
    x = tokens.view(b, height // PATCH, width // PATCH, c, PATCH, PATCH)
    x = x.permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def image_ids(latent_height: int, latent_width: int, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32, index: float = 0.0) -> torch.Tensor:
    """Position ids [(H/2)*(W/2), 3] = (index, row, column) of each token, as FluxPipeline builds them."""
    rows, cols = latent_height // PATCH, latent_width // PATCH
    ids = torch.zeros(rows, cols, 3)
    ids[..., 0] = index
    ids[..., 1] = ids[..., 1] + torch.arange(rows)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def text_ids(seq_len: int, device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Text tokens all sit at position 0 in FLUX.1's 3-axis RoPE."""
    return torch.zeros(seq_len, 3, device=device, dtype=dtype)


def pad_to_patch(latents: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W up to a multiple of the patch size (circular, as ComfyUI does); returns the original size.

    Images that are multiples of 8 but not of 16 (allowed by EmptyLatentImage and VAEEncode) still sample;
    the padding is cropped off afterwards.
    """
    h, w = latents.shape[-2:]
    pad_h, pad_w = (-h) % PATCH, (-w) % PATCH
    if pad_h or pad_w:
        latents = F.pad(latents, (0, pad_w, 0, pad_h), mode="circular")
    return latents, (h, w)


def fit_latent_channels(samples: torch.Tensor, fmt: LatentFormat) -> torch.Tensor:
    """An all-zero latent with the wrong channel count (EmptyLatentImage's 4 channels) becomes FLUX's 16.

    Any other mismatch is a real error: the latent came from another model family's VAE.
    """
    if samples.shape[1] == fmt.channels:
        return samples
    if not torch.count_nonzero(samples):
        shape = (samples.shape[0], fmt.channels, *samples.shape[2:])
        return torch.zeros(shape, dtype=samples.dtype, device=samples.device)
    raise ValueError(f"latent has {samples.shape[1]} channels but this FLUX model expects {fmt.channels}; "
                     "it was encoded by another model's VAE")
