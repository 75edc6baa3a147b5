"""FLUX.2's sigma schedule: the empirical resolution- and step-dependent shift of BFL's reference code.

seq_len is the image's token count (one per 16x16 pixels). mu is linear in seq_len, with a slope and offset
that depend on the step count: for seq_len > 4300 the 200-step line (0.00016927 seq_len + 0.45666666);
otherwise the value interpolated linearly in `steps` between the 10-step line (8.73809524e-05 seq_len +
1.89833333) and the 200-step line. Sigmas are t = linspace(1, 1/steps, steps) mapped through
e^mu / (e^mu + 1/t - 1), then 0, computed by diffusers' FlowMatchEulerDiscreteScheduler exactly as the
Flux2Pipeline / Flux2KleinPipeline do (so they agree to the last bit).

Flux2Scheduler(steps, width, height) is this schedule; KSampler / BasicScheduler with a FLUX.2 model use the
same mu (from the latent's size, or ModelSamplingFlux's size, and the step count) with any scheduler.
"""

from __future__ import annotations

import torch

from engine.sampling.schedules import FlowSchedule, simple_sigmas

PIXELS_PER_TOKEN = 16 * 16
DEFAULT_SIZE = (1024, 1024)


def image_seq_len(width: int, height: int) -> int:
    """Tokens of a FLUX.2 image: (W/16) * (H/16), rounded as ComfyUI's Flux2Scheduler does."""
    return round(width * height / PIXELS_PER_TOKEN)


def compute_empirical_mu(seq_len: int, steps: int) -> float:
    """The time shift mu for `seq_len` image tokens sampled in `steps` steps (module docstring)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if seq_len > 4300:
        return float(a2 * seq_len + b2)
    m_200 = a2 * seq_len + b2
    m_10 = a1 * seq_len + b1
    slope = (m_200 - m_10) / 190.0
    return float(slope * steps + (m_200 - 200.0 * slope))


def flux2_schedule(steps: int, width: int, height: int) -> FlowSchedule:
    return FlowSchedule(mu=compute_empirical_mu(image_seq_len(width, height), steps))


def flux2_sigmas(steps: int, width: int, height: int) -> torch.Tensor:
    """Flux2Scheduler: steps + 1 float32 sigmas from 1 to 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return simple_sigmas(flux2_schedule(steps, width, height), int(steps))


def flux2_model_schedule(sampling: object, latent_size: tuple[int, int] | None, steps: int | None) -> FlowSchedule:
    """The schedule of a FLUX.2 MODEL handle: ModelSamplingFlux's size if set, else the latent's (width,
    height in pixels), else 1024x1024; `steps` defaults to 20 when unknown (timestep-range conditioning)."""
    width, height = getattr(sampling, "width", None), getattr(sampling, "height", None)
    if width is None or height is None:
        width, height = latent_size or DEFAULT_SIZE
    return flux2_schedule(int(steps or 20), int(width), int(height))
