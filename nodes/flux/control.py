"""Structural control nodes: InstructPixToPixConditioning (the control image of FLUX.1 Depth/Canny, full
models or control LoRAs) and SetFirstSigma. The maths lives in engine/sampling/control.py."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Float, Output, Socket, node
from engine.core.types import CONDITIONING, IMAGE, LATENT, SIGMAS, VAE

from .common import memory


@node("InstructPixToPixConditioning", category="conditioning/instructpix2pix",
      inputs=[Socket("positive", CONDITIONING), Socket("negative", CONDITIONING), Socket("vae", VAE),
              Socket("pixels", IMAGE)],
      outputs=[Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent")],
      description="Encodes the control image (a depth map or edges) for FLUX.1 Depth/Canny, full models or "
                  "control LoRAs: the model reads its latent on every step. The latent output is empty.")
def instruct_pix_to_pix_conditioning(ctx: Any, positive: list, negative: list, vae: Any, pixels: Any):
    from engine.sampling.control import instruct_pix_to_pix_conditioning as condition  # noqa: PLC0415 - loads torch

    return condition(positive, negative, vae, pixels, memory(ctx))


@node("SetFirstSigma", category="sampling/custom_sampling/sigmas",
      inputs=[Socket("sigmas", SIGMAS), Float("sigma", 136.0, min=0.0, max=20000.0, step=0.001, round=False)],
      outputs=[SIGMAS], description="Replaces the first sigma of a schedule.")
def set_first_sigma(ctx: Any, sigmas: Any, sigma: float):
    from engine.sampling.control import set_first_sigma as set_first  # noqa: PLC0415 - loads torch

    return (set_first(sigmas, float(sigma)),)


NODES = [instruct_pix_to_pix_conditioning, set_first_sigma]
