"""Latents and the VAE: EmptySD3LatentImage, EmptyLatentImage, VAEDecode, VAEDecodeTiled, VAEEncode.

Image sizes are checked at validation time (a clear error before anything runs): multiples of 16 for
FLUX's latent (8 for the generic EmptyLatentImage, whose odd latents the sampler pads), and at most
4 megapixels.
"""

from __future__ import annotations

from typing import Any

from engine.core.schema import Int, Socket, node
from engine.core.types import IMAGE, LATENT, VAE

from .common import MAX_RESOLUTION, memory

MAX_PIXELS = 4 * 1024 * 1024  # equals engine.sampling.latents.MAX_PIXELS (kept torch-free here)


def size_problem(width: Any, height: Any, multiple: int) -> str | None:
    """Why (width, height) cannot be generated, or None."""
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if not 16 <= value <= MAX_RESOLUTION:
            return f"{name} {value} is outside 16..{MAX_RESOLUTION}"
        if value % multiple:
            return f"{name} {value} is not a multiple of {multiple}"
    if width is not None and height is not None and width * height > MAX_PIXELS:
        return (f"{width}x{height} is {width * height / 1e6:.2f} megapixels; FLUX supports at most "
                f"{MAX_PIXELS / 1e6:.2f} (e.g. 2048x2048)")
    return None


def size_validator(multiple: int):
    """A validate_inputs hook refusing sizes that are not multiples of `multiple` or too large."""
    def validate(width: int | None = None, height: int | None = None) -> bool | str:
        return size_problem(width, height, multiple) or True

    return validate


def size_inputs(default: int, multiple: int) -> list[Int]:
    """A blank-latent node's inputs: width and height (default x default, in steps of `multiple`), batch_size."""
    return [Int("width", default, min=16, max=MAX_RESOLUTION, step=multiple),
            Int("height", default, min=16, max=MAX_RESOLUTION, step=multiple),
            Int("batch_size", 1, min=1, max=4096)]


def _empty(width: int, height: int, batch_size: int, channels: int, multiple: int) -> dict:
    import torch

    problem = size_problem(width, height, multiple)
    if problem:
        raise ValueError(problem)
    return {"samples": torch.zeros(batch_size, channels, height // 8, width // 8)}


@node("EmptySD3LatentImage", category="latent/sd3", inputs=size_inputs(1024, 16), outputs=[LATENT],
      validate_inputs=size_validator(16), description="A blank 16-channel latent (FLUX.1 and SD3) of the given size.")
def empty_sd3_latent_image(ctx: Any, width: int, height: int, batch_size: int):
    return (_empty(width, height, batch_size, 16, 16),)


@node("EmptyLatentImage", category="latent", display_name="Empty Latent Image", inputs=size_inputs(512, 8),
      outputs=[LATENT], validate_inputs=size_validator(8),
      description="A blank 4-channel latent; FLUX samplers widen it to 16 channels.")
def empty_latent_image(ctx: Any, width: int, height: int, batch_size: int):
    return (_empty(width, height, batch_size, 4, 8),)


@node("VAEDecode", category="latent", display_name="VAE Decode",
      inputs=[Socket("samples", LATENT), Socket("vae", VAE)], outputs=[IMAGE])
def vae_decode(ctx: Any, samples: dict, vae: Any):
    from engine.sampling.vae import decode  # noqa: PLC0415 - vae loads torch on first use

    return (decode(vae, samples["samples"], memory(ctx)),)


@node("VAEDecodeTiled", category="_for_testing", display_name="VAE Decode (Tiled)",
      inputs=[Socket("samples", LATENT), Socket("vae", VAE),
              Int("tile_size", 512, min=64, max=4096, step=32), Int("overlap", 64, min=0, max=4096, step=32),
              Int("temporal_size", 64, min=8, max=4096, step=4),
              Int("temporal_overlap", 8, min=4, max=4096, step=4)],
      outputs=[IMAGE],
      description="Decodes in overlapping tiles to bound memory (temporal inputs apply to video VAEs only).")
def vae_decode_tiled(ctx: Any, samples: dict, vae: Any, tile_size: int, overlap: int, temporal_size: int = 64,
                     temporal_overlap: int = 8):
    from engine.sampling.vae import decode_tiled  # noqa: PLC0415 - vae loads torch on first use

    if overlap >= tile_size // 2:
        overlap = tile_size // 4  # as ComfyUI: a too-large overlap is reduced rather than refused
    return (decode_tiled(vae, samples["samples"], memory(ctx), tile_size=tile_size, overlap=overlap),)


@node("VAEEncode", category="latent", display_name="VAE Encode",
      inputs=[Socket("pixels", IMAGE), Socket("vae", VAE)], outputs=[LATENT])
def vae_encode(ctx: Any, pixels: Any, vae: Any):
    from engine.sampling.vae import encode  # noqa: PLC0415 - vae loads torch on first use

    return ({"samples": encode(vae, pixels, memory(ctx))},)


NODES = [empty_sd3_latent_image, empty_latent_image, vae_decode, vae_decode_tiled, vae_encode]
