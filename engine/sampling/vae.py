"""VAE decode/encode between IMAGE ([B, H, W, C] floats in 0..1) and raw latents ([B, 16, H/8, W/8]).

Decoding maps the VAE's -1..1 output with x / 2 + 0.5 clamped to 0..1 (FluxPipeline's postprocessing);
encoding takes the latent distribution's mode, so the same image always gives the same latent.
Tiled decoding splits the latent into overlapping tiles and blends them with linear ramps across the
overlap, so large images decode in bounded memory.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.models.common.dtypes import module_dtype

VAE_SCALE = 8


def _check_vae(vae: Any) -> Any:
    if vae is None:
        raise ValueError("vae input is empty: the checkpoint it came from has no VAE; load one with VAELoader")
    module = getattr(vae, "vae", None)
    if module is None:
        raise TypeError(f"expected a VAE handle, got {type(vae).__name__}")
    return module


def spatial_scale(module: Any) -> int:
    """Pixels per latent pixel: 8 for FLUX.1's VAE, 16 for FLUX.2's (whose handle patchifies)."""
    return int(getattr(module, "spatial_scale", VAE_SCALE))


def _decode(module: Any, latents: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = module.decode(latents.to(device=device, dtype=module_dtype(module)), return_dict=False)[0]
    return out.float()


@torch.no_grad()
def decode(vae: Any, samples: torch.Tensor, memory: Any) -> torch.Tensor:
    module = _check_vae(vae)
    _check_latent(module, samples)
    with memory.use(module):
        decoded = _decode(module, samples, memory.device)
    return to_image(decoded)


def to_image(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output [B, C, H, W] in -1..1 -> IMAGE [B, H, W, C] in 0..1 on the CPU."""
    return (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


def _check_latent(module: Any, samples: torch.Tensor) -> None:
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise ValueError("samples must be a LATENT with 'samples' [batch, channels, height, width]")
    channels = int(getattr(module.config, "latent_channels", samples.shape[1]))
    if samples.shape[1] != channels:
        raise ValueError(f"latent has {samples.shape[1]} channels but this VAE decodes {channels}; "
                         "it belongs to another model family")


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Blend weights along one axis of a tile: rising over the overlap unless at the image edge."""
    weights = torch.ones(length)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        if not at_start:
            weights[:overlap] = torch.minimum(weights[:overlap], ramp)
        if not at_end:
            weights[-overlap:] = torch.minimum(weights[-overlap:], ramp.flip(0))
    return weights


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


@torch.no_grad()
def decode_tiled(vae: Any, samples: torch.Tensor, memory: Any, tile_size: int = 512, overlap: int = 64,
                 decode_tile: Any = None) -> torch.Tensor:
    """Decode in tiles of `tile_size` pixels overlapping by `overlap` pixels (VAEDecodeTiled)."""
    module = _check_vae(vae) if decode_tile is None else None
    if module is not None:
        _check_latent(module, samples)
    scale = spatial_scale(module) if module is not None else VAE_SCALE
    tile = max(tile_size // scale, 1)
    lap = min(max(overlap // scale, 0), tile // 2)
    b, _, h, w = samples.shape
    with memory.use(module):
        run = decode_tile or (lambda z: _decode(module, z, memory.device))
        out = None
        weight = torch.zeros(1, 1, h * scale, w * scale)
        for y in _tile_starts(h, tile, lap):
            for x in _tile_starts(w, tile, lap):
                piece = run(samples[:, :, y:y + tile, x:x + tile]).cpu()
                if out is None:
                    out = torch.zeros(b, piece.shape[1], h * scale, w * scale)
                th, tw = piece.shape[-2:]
                wy = _ramp(th, lap * scale, y == 0, y + tile >= h)
                wx = _ramp(tw, lap * scale, x == 0, x + tile >= w)
                mask = wy[:, None] * wx[None, :]
                ys, xs = y * scale, x * scale
                out[:, :, ys:ys + th, xs:xs + tw] += piece * mask
                weight[:, :, ys:ys + th, xs:xs + tw] += mask
    return to_image(out / weight)


def crop_to_multiple(pixels: torch.Tensor, multiple: int = VAE_SCALE) -> torch.Tensor:
    """Center-crop IMAGE [B, H, W, C] so H and W are multiples of `multiple` (as ComfyUI's VAEEncode)."""
    h, w = pixels.shape[1], pixels.shape[2]
    new_h, new_w = (h // multiple) * multiple, (w // multiple) * multiple
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image of {w}x{h} is smaller than the VAE's {multiple}-pixel patch")
    top, left = (h - new_h) // 2, (w - new_w) // 2
    return pixels[:, top:top + new_h, left:left + new_w, :]


@torch.no_grad()
def encode(vae: Any, pixels: torch.Tensor, memory: Any) -> torch.Tensor:
    """IMAGE -> raw latents (CPU float32): the mode of the VAE's latent distribution, as ComfyUI."""
    return _latent_dist(vae, pixels, memory, lambda dist: (dist.mode(),))[0]


@torch.no_grad()
def encode_posterior(vae: Any, pixels: torch.Tensor, memory: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE -> (mean, std) of the VAE's latent distribution (CPU float32); diffusers samples mean + std * eps.
    Only FLUX.1's AutoencoderKL has a std (FLUX.2's encoder wrapper is deterministic)."""
    mean, std = _latent_dist(vae, pixels, memory, lambda dist: (dist.mode(), dist.std))
    return mean, std


def _latent_dist(vae: Any, pixels: torch.Tensor, memory: Any, read: Any) -> tuple[torch.Tensor, ...]:
    """Encode IMAGE pixels and `read` what is needed from the latent distribution, as CPU float32."""
    module = _check_vae(vae)
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        raise ValueError("pixels must be an IMAGE [batch, height, width, channels]")
    pixels = crop_to_multiple(pixels[..., :3], spatial_scale(module))
    x = pixels.permute(0, 3, 1, 2).float() * 2.0 - 1.0
    with memory.use(module):
        dist = module.encode(x.to(device=memory.device, dtype=module_dtype(module))).latent_dist
        values = read(dist)
    return tuple(value.float().cpu() for value in values)
