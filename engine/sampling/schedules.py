"""Sigma schedules for flow-matching FLUX models.

A `FlowSchedule` is the model's map from a timestep t in (0, 1] to its noise level sigma:
- FLUX.1 dev (dynamic shifting): sigma(t) = e^mu / (e^mu + 1/t - 1), where mu grows linearly with the
  image's token count (`calculate_shift`, the formula of diffusers' FluxPipeline);
- fixed shift s (schnell has s = 1, the identity): sigma(t) = s t / (1 + (s - 1) t).
Its training grid has `num_train_timesteps` (1000) points t_k = k / 1000, so sigma_max = sigma(1) = 1 and
sigma_min = sigma(1/1000).

Schedulers (ComfyUI's names) turn (schedule, steps) into steps + 1 sigmas ending in 0:
- simple: t = linspace(1, 1/steps, steps), computed by diffusers' FlowMatchEulerDiscreteScheduler, so it
  is exactly FluxPipeline's schedule. (ComfyUI reads the same curve from a lookup table, which agrees
  whenever its table size is a multiple of `steps`.)
- normal: t uniform from 1 down to 1/1000 (both included); sgm_uniform: steps + 1 uniform points from 1 to
  1/1000 with the last dropped. Both map t through sigma(t).
- karras: Karras et al. 2022, eq. 5, rho = 7, between sigma_max and sigma_min.
- exponential: uniform in log sigma between sigma_max and sigma_min.
- beta: Lee et al. 2024 ("Beta Sampling is All You Need"): t = Beta(0.6, 0.6) quantiles of
  1 - linspace(0, 1, steps, endpoint=False), rounded to the training grid; repeated points are dropped.
- kl_optimal: Sabour et al. 2024 ("Align Your Steps"): sigma_i = tan((1 - u) atan(sigma_max) + u
  atan(sigma_min)), u = linspace(0, 1, steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
# The image size BasicScheduler assumes when nothing fixes it (no ModelSamplingFlux, no latent at hand):
# 1024x1024 gives mu = max_shift = 1.15, which is also ComfyUI's default shift for FLUX.1 dev.
DEFAULT_SCHEDULE_SIZE = (1024, 1024)


def calculate_shift(image_seq_len: float, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """mu for an image of `image_seq_len` tokens: the line through (base_seq_len, base_shift) and
    (max_seq_len, max_shift), as diffusers' FluxPipeline computes it."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return image_seq_len * slope + intercept


@dataclass(frozen=True)
class FlowSchedule:
    mu: float | None = None  # exponential (FLUX) shift; None means the linear `shift`
    shift: float = 1.0
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        if self.mu is not None:
            return math.exp(self.mu) / (math.exp(self.mu) + (1.0 / t - 1.0))
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Inverse of `sigma`."""
        sigma = sigma.double()
        if self.mu is not None:
            return 1.0 / (1.0 + math.exp(self.mu) * (1.0 / sigma - 1.0))
        return sigma / (self.shift - (self.shift - 1.0) * sigma)

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(1.0)))

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(1.0 / self.num_train_timesteps)))

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma reached after `percent` (0..1) of the trajectory, for timestep-range conditioning."""
        if percent <= 0.0:
            return 1.0e9  # before the start: above any sigma
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor(1.0 - percent)))


def image_seq_len(width: float, height: float) -> float:
    """Tokens of a width x height image (one per 16x16 pixels); ComfyUI's ModelSamplingFlux formula."""
    return width * height / (16 * 16)


def flow_schedule(sampling: object, image_size: tuple[float, float] | None = None) -> FlowSchedule:
    """The schedule of a model handle's `FluxSampling` for an image of `image_size` = (width, height).

    With dynamic shifting, a size fixed on the handle (ModelSamplingFlux) wins over `image_size`, and
    `DEFAULT_SCHEDULE_SIZE` applies when neither is known.
    """
    if not getattr(sampling, "use_dynamic_shifting", False):
        return FlowSchedule(mu=None, shift=float(getattr(sampling, "shift", 1.0)))
    if sampling.width is not None and sampling.height is not None:
        width, height = sampling.width, sampling.height
    else:
        width, height = image_size or DEFAULT_SCHEDULE_SIZE
    mu = calculate_shift(image_seq_len(width, height), sampling.base_seq_len, sampling.max_seq_len,
                         sampling.base_shift, sampling.max_shift)
    return FlowSchedule(mu=mu)


# ----- schedulers: (schedule, steps) -> float32 tensor of steps + 1 sigmas ending in 0

def _finish(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.float(), torch.zeros(1)])


def simple_sigmas(schedule: FlowSchedule, steps: int) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: PLC0415 - diffusers loads only for this schedule

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=schedule.num_train_timesteps, shift=schedule.shift,
        use_dynamic_shifting=schedule.mu is not None)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=schedule.mu)
    return scheduler.sigmas.detach().clone().float()


def normal_sigmas(schedule: FlowSchedule, steps: int) -> torch.Tensor:
    t_min = 1.0 / schedule.num_train_timesteps
    return _finish(schedule.sigma(torch.linspace(1.0, t_min, steps, dtype=torch.float64)))


def sgm_uniform_sigmas(schedule: FlowSchedule, steps: int) -> torch.Tensor:
    t_min = 1.0 / schedule.num_train_timesteps
    return _finish(schedule.sigma(torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)[:-1]))


def karras_sigmas(schedule: FlowSchedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    max_inv, min_inv = schedule.sigma_max ** (1.0 / rho), schedule.sigma_min ** (1.0 / rho)
    return _finish((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential_sigmas(schedule: FlowSchedule, steps: int) -> torch.Tensor:
    logs = torch.linspace(math.log(schedule.sigma_max), math.log(schedule.sigma_min), steps, dtype=torch.float64)
    return _finish(logs.exp())


def beta_sigmas(schedule: FlowSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    from scipy.stats import beta as beta_distribution  # noqa: PLC0415 - scipy loads only for the beta schedule

    last_index = schedule.num_train_timesteps - 1
    quantiles = 1.0 - np.linspace(0.0, 1.0, steps, endpoint=False)
    indices = np.rint(beta_distribution.ppf(quantiles, alpha, beta) * last_index)
    kept = [index for i, index in enumerate(indices) if i == 0 or index != indices[i - 1]]
    t = (torch.tensor(kept, dtype=torch.float64) + 1.0) / schedule.num_train_timesteps
    return _finish(schedule.sigma(t))


def kl_optimal_sigmas(schedule: FlowSchedule, steps: int) -> torch.Tensor:
    u = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    angles = (1.0 - u) * math.atan(schedule.sigma_max) + u * math.atan(schedule.sigma_min)
    return _finish(torch.tan(angles))


Scheduler = Callable[[FlowSchedule, int], torch.Tensor]
# In ComfyUI's order (its SCHEDULERS list), restricted to those implemented here.
SCHEDULERS: dict[str, Scheduler] = {
    "simple": simple_sigmas,
    "sgm_uniform": sgm_uniform_sigmas,
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "beta": beta_sigmas,
    "normal": normal_sigmas,
    "kl_optimal": kl_optimal_sigmas,
}
SCHEDULER_NAMES = tuple(SCHEDULERS)


def scheduler_sigmas(name: str, schedule: FlowSchedule, steps: int) -> torch.Tensor:
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; available: {list(SCHEDULERS)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return SCHEDULERS[name](schedule, int(steps))


def denoise_sigmas(name: str, schedule: FlowSchedule, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """KSampler/BasicScheduler's `denoise`: the last steps + 1 sigmas of a schedule of steps / denoise steps.

    denoise <= 0 gives an empty schedule (the latent passes through unchanged).
    """
    if denoise <= 0.0:
        return torch.zeros(0)
    if denoise >= 1.0:
        return scheduler_sigmas(name, schedule, steps)
    total = int(steps / denoise)
    return scheduler_sigmas(name, schedule, total)[-(steps + 1):]


def step_range_sigmas(sigmas: torch.Tensor, start_at_step: int, end_at_step: int,
                      force_full_denoise: bool) -> torch.Tensor:
    """KSamplerAdvanced's window: sigmas[start : end + 1], with the last forced to 0 when fully denoising."""
    sigmas = sigmas.clone()
    if end_at_step < len(sigmas) - 1:
        sigmas = sigmas[: end_at_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0.0
    if start_at_step >= len(sigmas) - 1:
        return torch.zeros(0)
    return sigmas[start_at_step:]
