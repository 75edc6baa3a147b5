"""EmptyFlux2LatentImage (blank FLUX.2 latent) and Flux2Scheduler (FLUX.2's sigma schedule)."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Int, node
from engine.core.types import LATENT, SIGMAS
from nodes.flux.common import MAX_RESOLUTION
from nodes.flux.latent import size_inputs, size_problem

FLUX2_CHANNELS = 128  # engine.sampling.flux2_latents.FLUX2_CHANNELS (kept torch-free here)
FLUX2_DOWNSCALE = 16


def _validate_size(width: int | None = None, height: int | None = None) -> bool | str:
    return size_problem(width, height, FLUX2_DOWNSCALE) or True


@node("EmptyFlux2LatentImage", category="latent", display_name="Empty Flux 2 Latent",
      inputs=size_inputs(1024, FLUX2_DOWNSCALE), outputs=[LATENT], validate_inputs=_validate_size,
      description="A blank FLUX.2 latent: 128 channels at 1/16 of the image size.")
def empty_flux2_latent_image(ctx: Any, width: int, height: int, batch_size: int):
    import torch

    # Literal sizes are checked at validation; a linked size (GetImageSize) is floored to the 16-pixel grid,
    # as ComfyUI does, so a reference image's odd size still gives a usable latent.
    problem = size_problem(width - width % FLUX2_DOWNSCALE, height - height % FLUX2_DOWNSCALE, FLUX2_DOWNSCALE)
    if problem:
        raise ValueError(problem)
    shape = (batch_size, FLUX2_CHANNELS, height // FLUX2_DOWNSCALE, width // FLUX2_DOWNSCALE)
    return ({"samples": torch.zeros(shape)},)


@node("Flux2Scheduler", category="sampling/custom_sampling/schedulers",
      inputs=[Int("steps", 20, min=1, max=4096), Int("width", 1024, min=16, max=MAX_RESOLUTION, step=1),
              Int("height", 1024, min=16, max=MAX_RESOLUTION, step=1)],
      outputs=[SIGMAS],
      description="FLUX.2's sigmas: the empirical shift for this image size and step count (the reference "
                  "pipelines' schedule).")
def flux2_scheduler(ctx: Any, steps: int, width: int, height: int):
    from engine.sampling.flux2_schedule import flux2_sigmas  # noqa: PLC0415 - flux2_schedule loads torch on first use

    return (flux2_sigmas(steps, width, height),)


NODES = [empty_flux2_latent_image, flux2_scheduler]
