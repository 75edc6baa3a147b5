"""Flow-matching training math, as diffusers' train_dreambooth_lora_flux.py and train_dreambooth_lora_flux2_klein.py
compute it:

- a timestep is drawn per image from the 1000 discrete timesteps of FlowMatchEulerDiscreteScheduler (with
  dynamic shifting, i.e. the unshifted table t = 1000, 999, ..., 1): u in [0, 1) picks index int(u * 1000),
  u uniform ("uniform", diffusers' weighting_scheme "none") or sigmoid(N(logit_mean, logit_std)) ("sigmoid",
  diffusers' "logit_normal");
- "shift" (not in the diffusers scripts) draws u uniformly and moves the table's sigma through FLUX's
  resolution-dependent time shift (the same `mu` sampling uses for that image size), so training sees the
  noise levels the sampler visits;
- noisy = (1 - sigma) x + sigma noise, the target is noise - x, and the loss is the per-image mean of the
  weighted squared error, averaged over the batch (weighting "none", "sigma_sqrt", "cosmap").
The draws take an explicit generator, so a step's randomness depends only on the run's seed and the step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.sampling.schedules import FlowSchedule

NUM_TRAIN_TIMESTEPS = 1000


def timestep_table(count: int = NUM_TRAIN_TIMESTEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas), float32, exactly as FlowMatchEulerDiscreteScheduler builds them (dynamic shifting)."""
    timesteps = torch.from_numpy(np.linspace(1, count, count, dtype=np.float32)[::-1].copy()).to(torch.float32)
    sigmas = timesteps / count
    return sigmas * count, sigmas


_TIMESTEPS, _SIGMAS = timestep_table()


def sample_u(mode: str, batch: int, generator: torch.Generator, logit_mean: float = 0.0,
             logit_std: float = 1.0) -> torch.Tensor:
    """diffusers' compute_density_for_timestep_sampling on the CPU with `generator`."""
    if mode == "sigmoid":
        u = torch.normal(mean=logit_mean, std=logit_std, size=(batch,), device="cpu", generator=generator)
        return torch.sigmoid(u)
    return torch.rand(size=(batch,), device="cpu", generator=generator)


def timesteps_for(u: torch.Tensor, mode: str = "uniform", schedule: FlowSchedule | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps in [1, 1000], sigmas in (0, 1]) for draws `u`; "shift" moves the sigmas through `schedule`
    (the model's sampling schedule for the image size: `engine.sampling.pipeline.schedule_for`)."""
    indices = (u * NUM_TRAIN_TIMESTEPS).long()
    timesteps, sigmas = _TIMESTEPS[indices], _SIGMAS[indices]
    if mode == "shift":
        if schedule is None:
            raise ValueError("timestep sampling 'shift' needs the model's schedule for the image size")
        sigmas = schedule.sigma(sigmas).to(torch.float32)
        timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    return timesteps, sigmas


def loss_weighting(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """diffusers' compute_loss_weighting_for_sd3."""
    if scheme == "sigma_sqrt":
        return (sigmas ** -2.0).float()
    if scheme == "cosmap":
        bot = 1 - 2 * sigmas + 2 * sigmas ** 2
        return 2 / (math.pi * bot)
    return torch.ones_like(sigmas)


def expand_sigmas(sigmas: torch.Tensor, ndim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    sigma = sigmas.to(device=device, dtype=dtype).flatten()
    while sigma.ndim < ndim:
        sigma = sigma.unsqueeze(-1)
    return sigma


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """(1 - sigma) x + sigma noise; `sigmas` already expanded to the latents' rank."""
    return (1.0 - sigmas) * latents + sigmas * noise


def flow_matching_loss(prediction: torch.Tensor, noise: torch.Tensor, latents: torch.Tensor, sigmas: torch.Tensor,
                       weighting: str = "none") -> torch.Tensor:
    """Mean over the batch of each image's mean weighted squared error against the target noise - latents."""
    target = noise - latents
    weight = loss_weighting(weighting, sigmas)
    squared = weight.float() * (prediction.float() - target.float()) ** 2
    return torch.mean(squared.reshape(target.shape[0], -1), 1).mean()
