"""Inpainting and outpainting nodes: InpaintModelConditioning, SetLatentNoiseMask, VAEEncodeForInpaint,
DifferentialDiffusion. The maths lives in engine/sampling/fill.py; ImagePadForOutpaint is in nodes/core."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Boolean, Combo, Float, Int, Output, Socket, node
from engine.core.types import CONDITIONING, IMAGE, LATENT, MASK, MODEL, VAE

from .common import memory

NOISE_ORDERS = ("comfyui", "diffusers")  # engine.sampling.fill.NOISE_ORDERS (that module loads torch)


@node("InpaintModelConditioning", category="conditioning/inpaint",
      inputs=[Socket("positive", CONDITIONING), Socket("negative", CONDITIONING), Socket("vae", VAE),
              Socket("pixels", IMAGE), Socket("mask", MASK), Boolean("noise_mask", True),
              Combo("noise_order", NOISE_ORDERS, default="comfyui", optional=True, extra={"advanced": True},
                    tooltip="comfyui: the sampler's seed gives the starting noise, the masked image's latent is "
                            "its mode. diffusers: FluxFillPipeline's order (the generator samples the image "
                            "latent, then the noise, then the masked latent), to reproduce a diffusers script.")],
      outputs=[Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent")],
      description="Encodes the image and its masked version for inpainting: FLUX Fill reads the masked image "
                  "and mask from the conditioning; with noise_mask the sampler also keeps the unmasked area.")
def inpaint_model_conditioning(ctx: Any, positive: list, negative: list, vae: Any, pixels: Any, mask: Any,
                               noise_mask: bool = True, noise_order: str = "comfyui"):
    from engine.sampling.fill import inpaint_model_conditioning as condition  # noqa: PLC0415 - fill loads torch on first use

    return condition(positive, negative, vae, pixels, mask, bool(noise_mask), memory(ctx), noise_order)


@node("SetLatentNoiseMask", category="latent/inpaint", display_name="Set Latent Noise Mask",
      inputs=[Socket("samples", LATENT), Socket("mask", MASK)], outputs=[LATENT],
      description="Only the masked area of this latent is denoised; the rest is kept.")
def set_latent_noise_mask(ctx: Any, samples: dict, mask: Any):
    from engine.sampling.fill import set_latent_noise_mask as set_mask  # noqa: PLC0415 - fill loads torch on first use

    return (set_mask(samples, mask),)


@node("VAEEncodeForInpaint", category="latent/inpaint", display_name="VAE Encode (for Inpainting)",
      inputs=[Socket("pixels", IMAGE), Socket("vae", VAE), Socket("mask", MASK),
              Int("grow_mask_by", 6, min=0, max=64, step=1)],
      outputs=[LATENT],
      description="Encodes the image with the masked area greyed out, with the grown mask as noise mask "
                  "(use denoise 1.0).")
def vae_encode_for_inpaint(ctx: Any, pixels: Any, vae: Any, mask: Any, grow_mask_by: int = 6):
    from engine.sampling.fill import vae_encode_for_inpaint as encode  # noqa: PLC0415 - fill loads torch on first use

    return (encode(vae, pixels, mask, int(grow_mask_by), memory(ctx)),)


@node("DifferentialDiffusion", category="_for_testing", display_name="Differential Diffusion", experimental=True,
      inputs=[Socket("model", MODEL), Float("strength", 1.0, min=0.0, max=1.0, step=0.01, optional=True)],
      outputs=[MODEL],
      description="Soft inpainting: each pixel is repainted from the step its mask value reaches, so a "
                  "feathered mask blends gradually.")
def differential_diffusion(ctx: Any, model: Any, strength: float = 1.0):
    from engine.sampling.fill import DIFFERENTIAL_DIFFUSION  # noqa: PLC0415 - fill loads torch on first use

    if not hasattr(model, "with_option"):
        raise TypeError(f"model input is not a FLUX diffusion model (got {type(model).__name__})")
    return (model.with_option(DIFFERENTIAL_DIFFUSION, float(strength)),)


NODES = [inpaint_model_conditioning, set_latent_noise_mask, vae_encode_for_inpaint, differential_diffusion]
